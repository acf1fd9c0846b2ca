"""Parsers of `tinyllava-hf train`, `tinyllava-hf merge-lora` and `tinyllava-hf tiny-parts`.

    tinyllava-hf train --config recipes/debug/pretrain/config_siglip_llama.yaml [--key value ...]
    tinyllava-hf train --help                     # our options and the most used training ones
    tinyllava-hf train --help-all                 # every ModelArguments / DataArguments / SFTConfig option
    tinyllava-hf merge-lora ADAPTER_DIR OUT [--base-model PATH] [--dtype float32] [--overwrite]
    tinyllava-hf tiny-parts [OUT_DIR] [--overwrite]   # the tiny local parts + data the debug recipes train on

Each `make_<command>_parser(subparsers=None)` follows TRL's `make_parser` pattern (see `tinyllava_hf.cli`). Launchers
that need a module use the package's one entry point: `torchrun --nproc_per_node 2 -m tinyllava_hf train --config ...`.
"""

from __future__ import annotations

import argparse
import sys

from ..cli import command_parser, quiet_optional_stacks, reports_user_errors
from ..files import OutputExistsError
from ..loading import ModelLoadError
from .merge import MergeError  # light: merge_lora imports peft and transformers only when it runs

__all__ = ["COMMON_TRAINING_OPTIONS", "make_merge_lora_parser", "make_tiny_parts_parser", "make_train_parser"]

# The TrainingArguments / SFTConfig options `train --help` shows (`--help-all` shows all ~300). Help texts are ours:
# building them from `SFTConfig` would import transformers' Trainer stack (peft, bitsandbytes: seconds) for a help
# page; tests/test_recipes.py checks that each name is an SFTConfig field.
COMMON_TRAINING_OPTIONS = {
    "output_dir": "Where checkpoints and the final model go (an existing one with checkpoint-* is resumed).",
    "num_train_epochs": "Epochs over the training data.",
    "max_steps": "Optimizer steps to run (overrides num_train_epochs when > 0).",
    "per_device_train_batch_size": "Samples per device per step.",
    "gradient_accumulation_steps": "Steps whose gradients add up before each optimizer step.",
    "learning_rate": "Peak learning rate.",
    "lr_scheduler_type": "linear, cosine, constant, ...",
    "warmup_steps": "Linear warm-up steps (a float < 1 is a fraction of the run).",
    "bf16": "bf16 mixed precision (GPU).",
    "save_strategy": "no, steps or epoch.",
    "save_steps": "Save a checkpoint-* every N steps (save_strategy steps).",
    "save_total_limit": "Keep only the last N checkpoints.",
    "logging_steps": "Log every N steps.",
    "seed": "Random seed (the connector's initialisation, data order).",
    "deepspeed": "DeepSpeed JSON config (recipes/deepspeed/zero{2,3}.json).",
    "resume_from_checkpoint": "A checkpoint folder, true (the last complete one in output_dir) or false (afresh).",
    "report_to": "none, wandb, tensorboard, ...",
    "max_length": "Longest tokenised sample, image/audio placeholders included; longer ones are truncated safely.",
    "padding_free": "Pack each batch into one row without padding (our collator does it for image/audio data).",
}


def _train_help() -> None:
    """`train --help`: our option groups and the common training options, without importing TRL's trainer."""
    from trl import TrlParser

    from .arguments import DataArguments, ModelArguments

    parser = TrlParser(
        (ModelArguments, DataArguments),
        prog="tinyllava-hf train",
        usage="tinyllava-hf train --config RECIPE.yaml [--key value ...]",
        description="Train (pretrain/finetune) a TinyLLaVA model with TRL's SFTTrainer from a recipe YAML. Every "
        "option is also a recipe key; options take `_` or `-`. Recipes: recipes/<model>/<stage>/config_<variant>.yaml",
        epilog="--help-all lists every TrainingArguments / SFTConfig option.",
    )
    group = parser.add_argument_group("training (the most used TrainingArguments / SFTConfig options)")
    for name, text in COMMON_TRAINING_OPTIONS.items():
        group.add_argument(f"--{name}", metavar=name.upper(), help=text)
    parser.add_argument("--help-all", action="store_true", help="every TrainingArguments / SFTConfig option")
    parser.print_help()


def _train(args: argparse.Namespace) -> int:
    argv = args.train_argv
    if "--help-all" in argv:
        from .trainer import make_parser

        make_parser().print_help()
        sys.exit(0)
    if "-h" in argv or "--help" in argv:
        _train_help()
        sys.exit(0)
    quiet_optional_stacks()
    # Imported lazily: trl/peft/datasets are the `train` extra, and `tinyllava-hf --help` must not need them.
    from .trainer import main

    return main(argv)


def make_train_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """`tinyllava-hf train`: forwards its whole command line to the trainer's `TrlParser` (`trainer.make_parser`).

    That parser reads the recipe YAML, the overrides (`--output_dir` and `--output-dir` alike) and answers `--help`, so
    this one must not interpret any option: with "+" as its only prefix, every "--key" reaches `train_argv` verbatim.
    """
    parser = command_parser(
        subparsers,
        "train",
        help="train (pretrain/finetune) with TRL's SFTTrainer from a recipe YAML; see `train --help`",
        description="tinyllava-hf train --config RECIPE.yaml [--key value ...]",
        prefix_chars="+",
        add_help=False,
    )
    parser.add_argument("train_argv", nargs="*", help="--config RECIPE.yaml and --key value overrides")
    parser.set_defaults(func=_train)
    return parser


@reports_user_errors(MergeError, ModelLoadError)
def _merge_lora(args: argparse.Namespace) -> int:
    from .merge import merge_lora

    merge_lora(args.adapter_dir, args.out_dir, base_model=args.base_model, dtype=args.dtype, overwrite=args.overwrite)
    print(f"Merged checkpoint written to {args.out_dir}")
    return 0


def make_merge_lora_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """`tinyllava-hf merge-lora ADAPTER_DIR OUT`: fold a LoRA/QLoRA adapter into its base model."""
    parser = command_parser(
        subparsers,
        "merge-lora",
        help="merge a LoRA/QLoRA adapter into its base model (full-precision checkpoint)",
        description="Merge the LoRA/QLoRA adapter of a `tinyllava-hf train` run into its base model and save an "
        "ordinary checkpoint with its processor.",
    )
    parser.add_argument("adapter_dir", help="Folder with adapter_config.json (a train output_dir or checkpoint).")
    parser.add_argument("out_dir", help="Where to write the merged checkpoint and processor.")
    parser.add_argument("--base-model", default=None, help="Base checkpoint (default: the adapter's recorded base).")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(func=_merge_lora)
    return parser


@reports_user_errors(OutputExistsError)
def _tiny_parts(args: argparse.Namespace) -> int:
    from ..files import check_destination
    from .tiny_parts import save_tiny_parts

    check_destination(args.out_dir, args.overwrite)
    for name, path in save_tiny_parts(args.out_dir, seed=args.seed).items():
        print(f"{name:13s} {path}")
    return 0


def make_tiny_parts_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """`tinyllava-hf tiny-parts [OUT_DIR]`: what the debug recipes (`recipes/debug/`) build their model from."""
    parser = command_parser(
        subparsers,
        "tiny-parts",
        help="write tiny random LM/vision/audio parts and shapes data for the debug recipes",
        description="Save a tiny Llama LM, SigLIP tower and Whisper encoder (random weights) and small shapes "
        "datasets as Hugging Face folders, where the debug recipes expect them by default.",
    )
    parser.add_argument("out_dir", nargs="?", default="outputs/tiny_parts", help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace what OUT_DIR holds")
    parser.set_defaults(func=_tiny_parts)
    return parser
