"""``tinyllava-hf serve``: transformers' own OpenAI-compatible server (`transformers serve`), with TinyLLaVA in it.

    tinyllava-hf serve MODEL [--host 127.0.0.1] [--port 8000]     # one checkpoint, loaded before the server starts
    tinyllava-hf serve                                            # any checkpoint a request names, loaded on demand

Requests are OpenAI chat completions (`POST /v1/chat/completions`, streamed or not) with `image_url` and
`input_audio` content parts; `GET /health` answers once the server is up. With MODEL given, a request's `model` is
that same string (or left out).

A checkpoint that llava can express is better exported (`tinyllava-hf export-llava`) and served by `transformers
serve`, vLLM or SGLang directly. This command is for the others (qformer or resampler connectors, audio towers):
`transformers serve` cannot load them itself, because it picks a model class by name from transformers' own tables
(see :func:`register_for_serving`), and `--trust-remote-code` does not change that choice.
"""

from __future__ import annotations

import argparse
import json
import sys

from .cli import command_parser, first_line
from .loading import DTYPES, ModelLoadError


def register_for_serving() -> None:
    """Make `transformers serve` load TinyLLaVA checkpoints with our classes, and accept images and audio for them.

    `import tinyllava_hf` registers the classes with the Auto factories, which covers `from_pretrained`. The server
    (transformers 5.24, `cli/serving/model_manager.py`) also reads the *names* table
    `MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES` directly, twice: `_load_model` loads a checkpoint with
    `AutoModelForMultimodalLM` only when its `model_type` is a key there (otherwise it looks up
    `getattr(transformers, config.architectures[0])`, which cannot find a class outside transformers), and
    `get_model_modality` classifies a model by its class name among the table's values: "multimodal" is the
    modality whose requests keep both `image_url` and `input_audio` parts ("vlm" drops audio, and an unknown class
    fails the request). So the one entry `tinyllava -> TinyLlavaForConditionalGeneration` is added to that table,
    and nothing of the server is replaced. The entry does not disturb the lazy Auto mapping built on the same
    table: that mapping only resolves model types listed in transformers' own `CONFIG_MAPPING_NAMES`, and serves
    registered classes (ours) from its registry.
    """
    from transformers import AutoModelForMultimodalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES

    import tinyllava_hf  # noqa: F401  (registers the TinyLLaVA classes with the other Auto factories)

    from .configuration_tinyllava import TinyLlavaConfig
    from .modeling_tinyllava import TinyLlavaForConditionalGeneration

    AutoModelForMultimodalLM.register(TinyLlavaConfig, TinyLlavaForConditionalGeneration, exist_ok=True)
    MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES.setdefault(
        TinyLlavaConfig.model_type, TinyLlavaForConditionalGeneration.__name__
    )


def _chat_template_kwargs(model: str | None, chat_template: str | None) -> dict:
    """Default `apply_chat_template` kwargs for the server: the Jinja text of `--chat-template` (checked against the
    checkpoint's names, since the server would render an unknown name as the literal prompt)."""
    if chat_template is None:
        return {}
    if model is None:
        raise ValueError("--chat-template needs MODEL: a template name is looked up in that checkpoint")
    from .eval.runner import resolve_chat_template
    from .loading import load_processor

    return {"chat_template": resolve_chat_template(load_processor(model), chat_template)}


def _check_port(host: str, port: int) -> None:
    """Fail before the model loads when the address cannot be listened on (uvicorn would only find out after)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ValueError(f"--host {host} is not an address of this machine: {err}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closing socket is no clash
        try:
            probe.bind(address)
        except OSError as err:
            raise ValueError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --port") from None


def run_serve(args: argparse.Namespace) -> int:
    """The `serve` command: check the inputs, register our classes, run transformers' server until stopped."""
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        print(
            "error: serving needs fastapi, uvicorn, pydantic and openai: pip install 'tinyllava-hf[serve]'",
            file=sys.stderr,
        )
        return 1
    try:
        if not 1 <= args.port <= 65535:
            raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
        _check_port(args.host, args.port)
        source = None
        if args.model is not None:
            from .loading import load_processor, resolve_model_source

            source, is_local = resolve_model_source(args.model)
            if is_local:
                load_processor(source)  # cheap, and fails on a folder of the wrong kind before the server starts
        chat_template_kwargs = _chat_template_kwargs(source, args.chat_template)
    except (ModelLoadError, ValueError) as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 1

    register_for_serving()
    from transformers.cli.serve import Serve

    where = f"http://{args.host}:{args.port}/v1"
    pinned = f"{source} (requests name it as `model`, or leave `model` out)" if source else "any checkpoint requested"
    print(f"tinyllava-hf serve: {pinned}, OpenAI-compatible API at {where}; Ctrl+C stops", file=sys.stderr)
    try:
        # Our classes serve the checkpoint (`trust_remote_code=False`): with True, AutoConfig would build the copy of
        # the config class saved beside the weights, which no Auto model class knows.
        Serve(
            force_model=source,
            host=args.host,
            port=args.port,
            device=args.device,
            dtype=args.dtype,
            trust_remote_code=False,
            attn_implementation=args.attn_implementation,
            chat_template_kwargs=json.dumps(chat_template_kwargs) if chat_template_kwargs else None,
            enable_cors=args.enable_cors,
            log_level=args.log_level,
        )
    except (OSError, ValueError) as err:
        # Raised while the pinned model loads (before the server listens), or by a port that is taken.
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def make_serve_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """The `serve` parser: added to `subparsers` (`tinyllava-hf serve`) when given, else stand-alone."""
    parser = command_parser(
        subparsers,
        "serve",
        help="serve a checkpoint with transformers' OpenAI-compatible server",
        description=(
            "Serve TinyLLaVA checkpoints (any connector, vision and audio) with transformers' own OpenAI-compatible "
            "server (`transformers serve`): POST /v1/chat/completions with image_url / input_audio parts, "
            "GET /v1/models, GET /health."
        ),
    )
    parser.add_argument(
        "model", nargs="?", default=None, help="checkpoint folder (or Hub id) to load now; default: load on request"
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="listen port (default: 8000)")
    parser.add_argument("--device", default="auto", help="e.g. auto, cpu, cuda:0 (default: auto)")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="weights dtype (default: as saved)")
    parser.add_argument("--attn-implementation", default=None, help="e.g. sdpa, eager, flash_attention_2")
    parser.add_argument(
        "--chat-template", default=None, help="one of MODEL's chat template names (default: its default)"
    )
    parser.add_argument("--enable-cors", action="store_true", help="allow cross-origin requests (browser clients)")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error", "critical"),
        help="transformers log level (default: warning)",
    )
    parser.set_defaults(func=run_serve)
    return parser
