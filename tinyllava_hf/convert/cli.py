"""Parsers of the conversion commands `tinyllava-hf convert | export-llava | import-llava`.

Usage:
    tinyllava-hf convert SRC DST [--template NAME] [--tokenizer PATH] [--image-processor PATH] [--qformer-heads N]
    tinyllava-hf export-llava SRC DST
    tinyllava-hf import-llava SRC DST [--template NAME]
    tinyllava-hf export-gguf SRC DST [--outtype f32|f16|q8_0] [--name NAME]

Each command writes DST atomically and exits with 1 and a one-line `error: ...` on anything it cannot convert. Each
`make_<command>_parser(subparsers=None)` follows TRL's `make_parser` pattern (see `tinyllava_hf.cli`).
"""

from __future__ import annotations

import argparse

from ..cli import command_parser, reports_user_errors

__all__ = ["make_convert_parser", "make_export_gguf_parser", "make_export_llava_parser", "make_import_llava_parser"]


def _add_src_dst(parser: argparse.ArgumentParser, src: str, dst: str) -> None:
    parser.add_argument("src", help=src)
    parser.add_argument("dst", help=dst)
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")


# Anything a conversion cannot do (`ConversionError`, imported with the converters so that `--help` stays fast).
_conversion_errors = reports_user_errors("tinyllava_hf.convert.upstream:ConversionError")


@_conversion_errors
def _convert(args: argparse.Namespace) -> int:
    from .upstream import convert_upstream

    path = convert_upstream(
        args.src,
        args.dst,
        template=args.template,
        tokenizer=args.tokenizer,
        image_processor=args.image_processor,
        qformer_heads=args.qformer_heads,
        overwrite=args.overwrite,
    )
    print(f"wrote tinyllava-hf checkpoint: {path}")
    return 0


@_conversion_errors
def _export_llava(args: argparse.Namespace) -> int:
    from .llava_export import export_llava

    print(f"wrote llava checkpoint: {export_llava(args.src, args.dst, overwrite=args.overwrite)}")
    return 0


@_conversion_errors
def _export_gguf(args: argparse.Namespace) -> int:
    from .gguf_export import export_gguf

    files = export_gguf(args.src, args.dst, outtype=args.outtype, name=args.name, overwrite=args.overwrite)
    print(f"wrote GGUF pair: {files.model} and {files.mmproj}")
    return 0


@_conversion_errors
def _import_llava(args: argparse.Namespace) -> int:
    from .llava_export import import_llava

    path = import_llava(args.src, args.dst, template=args.template, overwrite=args.overwrite)
    print(f"wrote tinyllava-hf checkpoint: {path}")
    return 0


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


def make_convert_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """`tinyllava-hf convert SRC DST`: an upstream TinyLLaVA Factory checkpoint -> a tinyllava-hf folder."""
    parser = command_parser(
        subparsers,
        "convert",
        help="convert an upstream TinyLLaVA Factory checkpoint into a tinyllava-hf folder",
        description="Convert an upstream TinyLLaVA Factory checkpoint folder (config.json with "
        "llm_model_name_or_path, weights language_model.* / vision_tower._vision_tower.* / connector._connector.*) "
        "into a tinyllava-hf folder. Never downloads: hub ids in the config are resolved locally (next to SRC, in "
        "the working directory, in the local Hugging Face cache) or given explicitly.",
    )
    _add_src_dst(parser, "upstream checkpoint folder", "tinyllava-hf folder to write")
    parser.add_argument("--template", help="chat template name (default: conv_version, else the LM family's)")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: SRC)")
    parser.add_argument("--image-processor", help="folder with preprocessor_config.json (default: resolved locally)")
    parser.add_argument(
        "--qformer-heads",
        type=_positive_int,
        help="attention heads of a qformer connector, which upstream does not store (default: from a cached "
        "google-bert/bert-base-uncased config of the same width, else 12)",
    )
    parser.set_defaults(func=_convert)
    return parser


def make_export_llava_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """`tinyllava-hf export-llava SRC DST`: a tinyllava-hf folder -> a native transformers `llava` folder."""
    parser = command_parser(
        subparsers,
        "export-llava",
        help="export a tinyllava-hf folder as a native transformers llava checkpoint (no remote code)",
        description="Write a tinyllava-hf model whose architecture LLaVA can express (CLIP/SigLIP tower, mlp2x_gelu "
        "connector, an LM head without bias) as a native `llava` folder: LlavaForConditionalGeneration weights and "
        "LlavaProcessor files that load without trust_remote_code.",
    )
    _add_src_dst(parser, "tinyllava-hf folder", "llava folder to write")
    parser.set_defaults(func=_export_llava)
    return parser


def make_import_llava_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """`tinyllava-hf import-llava SRC DST`: a native transformers `llava` folder -> a tinyllava-hf folder."""
    parser = command_parser(
        subparsers,
        "import-llava",
        help="convert a native transformers llava checkpoint into a tinyllava-hf folder",
        description="Convert a native `llava` folder (LlavaForConditionalGeneration + LlavaProcessor) into a "
        "tinyllava-hf folder with an mlp2x_gelu connector.",
    )
    _add_src_dst(parser, "llava folder", "tinyllava-hf folder to write")
    parser.add_argument("--template", help="chat template name (required when the llava processor has none)")
    parser.set_defaults(func=_import_llava)
    return parser


def make_export_gguf_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """`tinyllava-hf export-gguf SRC DST`: a tinyllava-hf folder -> the GGUF pair llama.cpp's libmtmd reads."""
    parser = command_parser(
        subparsers,
        "export-gguf",
        help="export a tinyllava-hf folder as a llama.cpp GGUF pair (LM + mmproj)",
        description="Write DST/<name>-<outtype>.gguf (language model, tokenizer, chat template) and "
        "DST/mmproj-<name>-<outtype>.gguf (SigLIP tower, feature layer, image size and normalisation, mlp2x_gelu "
        "connector) for llama.cpp's multimodal library. What llama.cpp cannot express (other connectors and "
        "towers, SigLIP's dropped first patch, audio, non-Llama LMs, tokenizers it splits differently) is refused "
        "before anything is written. Details: docs/llama_cpp.md.",
    )
    _add_src_dst(parser, "tinyllava-hf folder", "folder to write the two .gguf files into")
    parser.add_argument(
        "--outtype",
        choices=("f32", "f16", "q8_0"),
        default="f16",
        help="weight precision: f32, f16 (default) or q8_0 (vectors always stay f32)",
    )
    parser.add_argument("--name", help="base name of the files (default: SRC's folder name)")
    parser.set_defaults(func=_export_gguf)
    return parser
