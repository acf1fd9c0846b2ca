"""Checkpoint conversion: upstream TinyLLaVA Factory -> tinyllava-hf, and tinyllava-hf <-> native transformers `llava`.

- `convert_upstream`: a checkpoint folder saved by TinyLLaVA Factory (`config.json` with `llm_model_name_or_path`,
  weights `language_model.*` / `vision_tower._vision_tower.*` / `connector._connector.*`) -> a tinyllava-hf folder.
- `export_llava`: a tinyllava-hf folder -> a native `llava` folder (no remote code), when llava can express the model.
- `import_llava`: a native `llava` folder -> a tinyllava-hf folder.

Every entry point writes atomically (a temporary folder next to the destination, renamed at the end) and loads
weights strictly (every source tensor consumed, every target tensor filled), raising `ConversionError` otherwise.
"""

from importlib import import_module
from typing import Any

# Public name -> defining submodule, imported on first access so that `tinyllava-hf convert --help` loads no torch.
_LAZY_ATTRIBUTES = {
    "ConversionError": "upstream",
    "convert_upstream": "upstream",
    "export_llava": "llava_export",
    "import_llava": "llava_export",
}
__all__ = sorted(_LAZY_ATTRIBUTES)


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRIBUTES:
        return getattr(import_module(f".{_LAZY_ATTRIBUTES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
