"""Parsers of `tinyllava-hf train`, `tinyllava-hf merge-lora` and `tinyllava-hf tiny-parts`.

    tinyllava-hf train --config recipes/debug/pretrain/config_siglip_llama.yaml [--key value ...]
    tinyllava-hf train --help                     # every ModelArguments / DataArguments / SFTConfig option
    tinyllava-hf merge-lora ADAPTER_DIR OUT [--base-model PATH] [--dtype float32]
    tinyllava-hf tiny-parts [OUT_DIR]             # the tiny local parts + data the debug recipes train on

Each `make_<command>_parser(subparsers=None)` follows TRL's `make_parser` pattern (see `tinyllava_hf.cli`). Launchers
that need a module use the package's one entry point: `torchrun --nproc_per_node 2 -m tinyllava_hf train --config ...`.
"""

from __future__ import annotations

import argparse

from ..cli import command_parser

__all__ = ["make_merge_lora_parser", "make_tiny_parts_parser", "make_train_parser"]


def _train(args: argparse.Namespace) -> int:
    # Imported lazily: trl/peft/datasets are the `train` extra, and `tinyllava-hf --help` must not need them.
    from .trainer import main

    return main(args.train_argv)


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


def _merge_lora(args: argparse.Namespace) -> int:
    from .merge import merge_lora

    merge_lora(args.adapter_dir, args.out_dir, base_model=args.base_model, dtype=args.dtype)
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
    parser.set_defaults(func=_merge_lora)
    return parser


def _tiny_parts(args: argparse.Namespace) -> int:
    from .tiny_parts import save_tiny_parts

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
    parser.set_defaults(func=_tiny_parts)
    return parser
