"""`tinyllava-hf convert | export-llava | import-llava`: the conversion subcommands.

Usage:
    tinyllava-hf convert SRC DST [--template NAME] [--tokenizer PATH] [--image-processor PATH] [--qformer-heads N]
    tinyllava-hf export-llava SRC DST
    tinyllava-hf import-llava SRC DST [--template NAME]

Each command writes DST atomically and exits with 1 and a one-line `error: ...` on anything it cannot convert.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

__all__ = ["register"]


def _run(action: Callable[[], object], done: str) -> int:
    # Imported lazily so that `tinyllava-hf --help` stays fast.
    from .upstream import ConversionError

    try:
        path = action()
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{done}: {path}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .upstream import convert_upstream

    return _run(
        lambda: convert_upstream(
            args.src,
            args.dst,
            template=args.template,
            tokenizer=args.tokenizer,
            image_processor=args.image_processor,
            qformer_heads=args.qformer_heads,
            overwrite=args.overwrite,
        ),
        "wrote tinyllava-hf checkpoint",
    )


def _export_llava(args: argparse.Namespace) -> int:
    from .llava_export import export_llava

    return _run(lambda: export_llava(args.src, args.dst, overwrite=args.overwrite), "wrote llava checkpoint")


def _import_llava(args: argparse.Namespace) -> int:
    from .llava_export import import_llava

    return _run(
        lambda: import_llava(args.src, args.dst, template=args.template, overwrite=args.overwrite),
        "wrote tinyllava-hf checkpoint",
    )


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `convert`, `export-llava` and `import-llava` subcommands; each sets `func` (returns an exit code)."""
    convert = subparsers.add_parser(
        "convert",
        help="convert an upstream TinyLLaVA Factory checkpoint into a tinyllava-hf folder",
        description="Convert an upstream TinyLLaVA Factory checkpoint folder (config.json with "
        "llm_model_name_or_path, weights language_model.* / vision_tower._vision_tower.* / connector._connector.*) "
        "into a tinyllava-hf folder. Never downloads: hub ids in the config are resolved locally (next to SRC, in "
        "the working directory, in the local Hugging Face cache) or given explicitly.",
    )
    convert.add_argument("src", help="upstream checkpoint folder")
    convert.add_argument("dst", help="tinyllava-hf folder to write")
    convert.add_argument("--template", help="chat template name (default: conv_version, else the LM family's)")
    convert.add_argument("--tokenizer", help="tokenizer folder (default: SRC)")
    convert.add_argument("--image-processor", help="folder with preprocessor_config.json (default: resolved locally)")
    convert.add_argument(
        "--qformer-heads",
        type=_positive_int,
        help="attention heads of a qformer connector, which upstream does not store (default: from a cached "
        "google-bert/bert-base-uncased config of the same width, else 12)",
    )
    convert.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    convert.set_defaults(func=_convert)

    export = subparsers.add_parser(
        "export-llava",
        help="export a tinyllava-hf folder as a native transformers llava checkpoint (no remote code)",
        description="Write a tinyllava-hf model whose architecture LLaVA can express (CLIP/SigLIP tower, mlp2x_gelu "
        "connector, an LM head without bias) as a native `llava` folder: LlavaForConditionalGeneration weights and "
        "LlavaProcessor files that load without trust_remote_code.",
    )
    export.add_argument("src", help="tinyllava-hf folder")
    export.add_argument("dst", help="llava folder to write")
    export.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    export.set_defaults(func=_export_llava)

    back = subparsers.add_parser(
        "import-llava",
        help="convert a native transformers llava checkpoint into a tinyllava-hf folder",
        description="Convert a native `llava` folder (LlavaForConditionalGeneration + LlavaProcessor) into a "
        "tinyllava-hf folder with an mlp2x_gelu connector.",
    )
    back.add_argument("src", help="llava folder")
    back.add_argument("dst", help="tinyllava-hf folder to write")
    back.add_argument("--template", help="chat template name (required when the llava processor has none)")
    back.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    back.set_defaults(func=_import_llava)
