"""Loading a saved checkpoint for inference: the one place every command (eval, demo, chat, serve) loads a model.

Where a model comes from is decided before anything is loaded (:func:`resolve_model_source`), so that a typo in a
local path is reported as a missing folder, never as a failed Hub download:

* anything that exists on disk is local: it must be a folder holding a ``config.json`` whose ``model_type`` is an
  image-text-to-text model (or that ships remote code);
* a name that does not exist and looks like a path (``/x``, ``./x``, ``~/x``, ``a/b/c``, ``x/``, a backslash, a drive
  letter, a weights-file extension) is a missing local folder;
* a bare ``name`` or ``org/name`` that is not on disk is a Hub id; when it cannot be loaded (offline and not cached,
  or no such repository) the error says both: no such local folder, and what the Hub said.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DTYPES = ("auto", "float32", "bfloat16", "float16")

# Names ending like this are files, never Hub ids (Hub ids may contain dots, e.g. "TinyLLaVA-3.1B").
_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".json", ".yaml", ".yml", ".jsonl", ".txt")


class ModelLoadError(OSError):
    """A model folder or Hub id that cannot be loaded; the message names it, what is wrong and the fix.

    An ``OSError`` like transformers' own loading errors, so callers catching those catch this too.
    """


def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be meant as a local path (so it must not be tried as a Hub id)."""
    if not name or name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or name in (".", ".."):
        return True
    if "\\" in name or name.endswith("/") or name.count("/") > 1 or (len(name) > 1 and name[1] == ":"):
        return True
    return name.lower().endswith(_FILE_SUFFIXES)


def resolve_model_source(model: str | os.PathLike) -> tuple[str, bool]:
    """``(source, is_local)`` for a ``--model`` argument, raising :class:`ModelLoadError` for a local path that is
    missing or is not a checkpoint folder. Cheap (a few stats and one small JSON read): call it before heavy work."""
    name = os.fspath(model)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{path} is a file; --model takes a checkpoint folder (the one with config.json)")
        config = path / "config.json"
        if not config.is_file():
            raise ModelLoadError(
                f"{path} is not a model checkpoint: it has no config.json (expected a folder written by "
                "save_pretrained, tinyllava-hf train, convert or demo)"
            )
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (ValueError, AttributeError) as err:
            raise ModelLoadError(f"{config} is not a valid config (not a JSON object: {err})") from None
        if not model_type:
            raise ModelLoadError(f"{config} has no 'model_type', so no model class can be chosen for {path}")
        return str(path), True
    if looks_like_path(name):
        raise ModelLoadError(f"model folder {name} does not exist")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelLoadError(f"model folder {name} does not exist (and it is not a valid Hub id)") from None
    return name, False


def _check_model_kind(source: str) -> None:
    """A local folder must hold an image-text-to-text model: a known ``model_type`` (transformers' or ours) whose
    config class has an ``AutoModelForImageTextToText`` class, or remote code (``auto_map``)."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    import tinyllava_hf  # noqa: F401  (registers the TinyLLaVA classes with the Auto factories)

    config = json.loads((Path(source) / "config.json").read_text(encoding="utf-8"))
    if config.get("auto_map"):
        return  # remote code decides (trust_remote_code=True)
    model_type = config["model_type"]
    if model_type not in CONFIG_MAPPING:
        raise ModelLoadError(
            f"{source} holds a model of unknown type {model_type!r} (config.json model_type) and no remote code "
            "(auto_map); is it a TinyLLaVA or other image-text-to-text checkpoint?"
        )
    if CONFIG_MAPPING[model_type] not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        raise ModelLoadError(
            f"{source} holds a {model_type!r} model, not an image-text-to-text model (TinyLLaVA, LLaVA, ...); "
            "give the folder of a TinyLLaVA checkpoint"
        )


def _load_failed(source: str, is_local: bool, what: str, err: Exception) -> ModelLoadError:
    # The first line of transformers' message is the useful one; the rest is generic advice.
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if is_local:
        return ModelLoadError(f"cannot load the {what} of {source}: {reason}")
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    where = "the Hub cache (HF_HUB_OFFLINE is set)" if offline else "the Hub"
    return ModelLoadError(
        f"no local folder {source!r}, and the Hub model {source!r} could not be loaded from {where}: {reason}"
    )


def load_processor(model: str | os.PathLike) -> Any:
    """The `AutoProcessor` of a checkpoint folder or Hub id (see the module docstring for how the source is chosen)."""
    from transformers import AutoProcessor

    import tinyllava_hf  # noqa: F401  (registers the TinyLLaVA classes with the Auto factories)

    source, is_local = resolve_model_source(model)
    if is_local:
        _check_model_kind(source)
    try:
        return AutoProcessor.from_pretrained(source, trust_remote_code=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise _load_failed(source, is_local, "processor", err) from err


def load_model(model: str | os.PathLike, device: str | None = None, dtype: str = "auto") -> Any:
    """The `AutoModelForImageTextToText` of a checkpoint folder or Hub id, on `device`, in eval mode."""
    import torch
    from transformers import AutoModelForImageTextToText

    import tinyllava_hf  # noqa: F401  (registers the TinyLLaVA classes with the Auto factories)

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    source, is_local = resolve_model_source(model)
    if is_local:
        _check_model_kind(source)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype: Any = dtype if dtype == "auto" else getattr(torch, dtype)
    try:
        loaded = AutoModelForImageTextToText.from_pretrained(source, trust_remote_code=True, dtype=torch_dtype)
    except (OSError, ValueError, KeyError) as err:
        # ValueError: a config of another kind ("Unrecognized configuration class ..."); OSError: missing or
        # unreadable weights; KeyError: an unknown model_type without remote code.
        raise _load_failed(source, is_local, "model", err) from err
    except Exception as err:
        # safetensors raises its own SafetensorError (e.g. a truncated file) that names no file.
        if type(err).__name__ != "SafetensorError":
            raise
        raise ModelLoadError(
            f"cannot read the weights of {source}: {err} (a truncated or corrupt .safetensors file; "
            "copy or download it again)"
        ) from err
    return loaded.to(device).eval()


def load_model_and_processor(
    model_dir: str | os.PathLike, device: str | None = None, dtype: str = "auto"
) -> tuple[Any, Any]:
    """Load a saved TinyLLaVA folder (or Hub id) with `AutoModelForImageTextToText` and `AutoProcessor`, in eval mode.

    `trust_remote_code=True` lets folders saved with their own code (and other image-text-to-text checkpoints) load
    too; `device` defaults to CUDA when available; `dtype` is one of `DTYPES`. The processor loads first: it is cheap
    and fails fast on a wrong folder. Raises :class:`ModelLoadError` naming the folder (or Hub id) and the problem.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    processor = load_processor(model_dir)
    return load_model(model_dir, device, dtype), processor
