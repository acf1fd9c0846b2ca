"""Checks of `tinyllava-hf train`'s inputs, run before anything heavy is loaded, each failing with one line that names
the problem and the fix (`TrainInputError`, printed by `trainer.main` without a traceback).

- the recipe file exists and is a YAML mapping; every recipe key and command-line option is known, and an unknown one
  names the closest known one;
- model and part folders follow `tinyllava_hf.loading`'s rule (a missing path is never tried as a Hub id);
- data files and media folders exist;
- `output_dir` does not overlap a model or part folder (saving there would overwrite the model being trained).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["TrainInputError", "check_train_argv", "check_train_paths", "closest"]


class TrainInputError(ValueError):
    """A `tinyllava-hf train` input that cannot work; the message names it and the fix."""


def closest(name: str, known: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the known name closest to `name`, or `` when none is close."""
    match = difflib.get_close_matches(name, sorted(set(known)), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _config_path(argv: Sequence[str]) -> str | None:
    if "--config" not in argv:
        return None
    index = list(argv).index("--config")
    if index + 1 >= len(argv):
        raise TrainInputError("--config needs a recipe file: --config recipes/<model>/<stage>/config_<variant>.yaml")
    return argv[index + 1]


def check_train_argv(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Recipe file and option names, checked against `parser` (the `TrlParser` of `tinyllava-hf train`)."""
    import yaml

    options = parser._option_string_actions  # every spelling: --a_b, --a-b, --no_a_b for booleans
    keys = {action.dest for action in options.values()}
    config = _config_path(argv)
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise TrainInputError(
                f"recipe file {config} does not exist (recipes live in recipes/<model>/<stage>/config_<variant>.yaml)"
            )
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise TrainInputError(f"recipe {config} is not valid YAML: {error}".replace("\n", " ")) from None
        if not isinstance(values, dict):
            raise TrainInputError(f"recipe {config} must be a YAML mapping of `key: value` lines")
        for key in values:
            if key != "env" and key not in keys:
                raise TrainInputError(f"unknown recipe key {key!r} in {config}{closest(str(key), keys)}")
    names = [arg.split("=", 1)[0] for arg in argv if arg.startswith("--") and arg != "--config"]
    for name in names:
        if name not in options:
            hint = closest(name, [option for option in options if option.startswith("--")])
            raise TrainInputError(f"unknown option {name}{hint} (`tinyllava-hf train --help` lists them)")


def _check_model_folder(option: str, value: str | None) -> bool:
    """Whether `value` is a local folder; raises when it names a missing or wrong local path."""
    from ..loading import ModelLoadError, resolve_model_source

    if value is None:
        return False
    try:
        _, is_local = resolve_model_source(value)
    except ModelLoadError as error:
        where = "" if os.path.isabs(value) else f" (relative paths are read from {os.getcwd()})"
        raise TrainInputError(f"--{option} {value}: {error}{where}") from None
    return is_local


def check_train_paths(model_args, data_args, training_args) -> None:
    """Model, part, data and output paths of a parsed run (see the module docstring)."""
    from ..files import check_not_overlapping

    sources = {
        option: getattr(model_args, option)
        for option in ("model_name_or_path", "llm", "vision_tower", "vision_tower_aux", "audio_tower")
    }
    for option, value in sources.items():
        if option == "llm" and _check_gguf_llm(model_args):
            continue
        if _check_model_folder(option, value):
            check_not_overlapping(value, training_args.output_dir, error=TrainInputError, what=f"--{option} folder")
    _check_template(model_args)
    for option in ("data_path", "eval_data_path"):
        for path in getattr(data_args, option) or []:
            if not os.path.isfile(path):
                raise TrainInputError(f"--{option}: data file {path} does not exist")
    for option in ("image_folder", "audio_folder"):
        folder = getattr(data_args, option)
        if folder is not None and not os.path.isdir(folder):
            raise TrainInputError(f"--{option}: folder {folder} does not exist")


def _check_template(model_args) -> None:
    """`--template` must name a template the run can find: an upstream one, one the checkpoint saved by name, or
    `lm` (the LM's own) when the LM folder has a chat template."""
    from ..builder import LM_TEMPLATE_NAME
    from ..chat_templates import list_chat_templates

    if model_args.template is None:
        return
    known = list(list_chat_templates())
    checkpoint = model_args.model_name_or_path
    if checkpoint is not None and os.path.isdir(os.path.join(checkpoint, "additional_chat_templates")):
        saved = os.listdir(os.path.join(checkpoint, "additional_chat_templates"))
        known += sorted(name.removesuffix(".jinja") for name in saved if name.removesuffix(".jinja") not in known)
    llm = model_args.llm
    if llm is not None and LM_TEMPLATE_NAME not in known and _lm_has_chat_template(model_args):
        known.append(LM_TEMPLATE_NAME)
    if model_args.template not in known:
        raise TrainInputError(
            f"--template {model_args.template!r} is not a known chat template; known: {', '.join(known)}"
            f"{closest(model_args.template, known)}"
        )


def _lm_has_chat_template(model_args) -> bool:
    """Whether the LM part brings its own chat template (a folder's tokenizer files, or a GGUF file's metadata)."""
    from ..gguf_parts import gguf_chat_template, local_gguf_file

    gguf = local_gguf_file(model_args.llm, getattr(model_args, "llm_gguf_file", None))
    if gguf is not None:
        return bool(gguf_chat_template(gguf))
    return os.path.isdir(model_args.llm) and _has_chat_template(model_args.llm)


def _has_chat_template(folder: str) -> bool:
    if os.path.isfile(os.path.join(folder, "chat_template.jinja")):
        return True
    config = os.path.join(folder, "tokenizer_config.json")
    if not os.path.isfile(config):
        return False
    with open(config, encoding="utf-8") as handle:
        return bool(json.load(handle).get("chat_template"))


def _check_gguf_llm(model_args) -> bool:
    """A GGUF file as the LM (`llm: x.gguf`, or a folder plus `llm_gguf_file`): check its architecture up front.

    Returns whether `llm` named a local GGUF file (then it is no model folder to check)."""
    from ..gguf_parts import check_gguf_architecture, local_gguf_file

    if not model_args.llm:
        return False
    try:
        path = local_gguf_file(model_args.llm, getattr(model_args, "llm_gguf_file", None))
        if path is not None:
            check_gguf_architecture(path)
    except (OSError, ValueError) as error:
        raise TrainInputError(f"--llm: {error}") from None
    return path is not None
