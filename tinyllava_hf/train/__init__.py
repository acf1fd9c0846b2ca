"""Training for TinyLLaVA models with TRL's `SFTTrainer`: build from parts, data, collator, tune modes, merge-lora.

Needs the `train` extra (trl, peft, accelerate, datasets; bitsandbytes for qlora, deepspeed for ZeRO). Submodules
are imported on use so that `import tinyllava_hf.train` stays cheap.

    from tinyllava_hf.train.trainer import parse_train_args, run_training
    run_training(*parse_train_args(["--config", "recipes/debug/pretrain/config_siglip_llama.yaml"]))
"""
