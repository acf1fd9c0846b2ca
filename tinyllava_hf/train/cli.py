"""`tinyllava-hf train` and `tinyllava-hf merge-lora`: wired into `tinyllava_hf.cli` through `register(subparsers)`.

tinyllava-hf train --config recipes/debug/pretrain/config_siglip_llama.yaml [--key value ...]
tinyllava-hf train --help                     # every ModelArguments / DataArguments / SFTConfig option
tinyllava-hf merge-lora ADAPTER_DIR OUT [--base-model PATH] [--dtype float32]
"""

import argparse

__all__ = ["register"]


def _train(args: argparse.Namespace) -> int:
    # Imported lazily: trl/peft/datasets are the `train` extra, and `tinyllava-hf --help` must not need them.
    from .trainer import main

    return main(args.train_argv)


def _merge_lora(args: argparse.Namespace) -> int:
    from .merge import main

    return main(args.adapter_dir, args.out_dir, base_model=args.base_model, dtype=args.dtype)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` and `merge-lora` subcommands; each parser's `func` returns an exit code."""
    # `train` hands its whole command line to `trl.TrlParser` (YAML + overrides + its own --help), so this parser
    # must not interpret any option: with "+" as its only prefix, every "--key" reaches `train_argv` verbatim.
    train = subparsers.add_parser(
        "train",
        help="train (pretrain/finetune) with TRL's SFTTrainer from a recipe YAML; see `train --help`",
        description="tinyllava-hf train --config RECIPE.yaml [--key value ...]",
        prefix_chars="+",
        add_help=False,
    )
    train.add_argument("train_argv", nargs="*", help="--config RECIPE.yaml and --key value overrides")
    train.set_defaults(func=_train)

    merge = subparsers.add_parser(
        "merge-lora", help="merge a LoRA/QLoRA adapter into its base model (full-precision checkpoint)"
    )
    merge.add_argument("adapter_dir", help="Folder with adapter_config.json (a train output_dir or checkpoint).")
    merge.add_argument("out_dir", help="Where to write the merged checkpoint and processor.")
    merge.add_argument("--base-model", default=None, help="Base checkpoint (default: the adapter's recorded base).")
    merge.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    merge.set_defaults(func=_merge_lora)
