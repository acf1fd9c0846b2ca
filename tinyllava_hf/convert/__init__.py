"""Checkpoint conversion: upstream TinyLLaVA Factory -> tinyllava-hf, and tinyllava-hf <-> native transformers `llava`.

- `convert_upstream`: a checkpoint folder saved by TinyLLaVA Factory (`config.json` with `llm_model_name_or_path`,
  weights `language_model.*` / `vision_tower._vision_tower.*` / `connector._connector.*`) -> a tinyllava-hf folder.
- `export_llava`: a tinyllava-hf folder -> a native `llava` folder (no remote code), when llava can express the model.
- `import_llava`: a native `llava` folder -> a tinyllava-hf folder.

Every entry point writes atomically (a temporary folder next to the destination, renamed at the end) and loads
weights strictly (every source tensor consumed, every target tensor filled), raising `ConversionError` otherwise.
"""

from .llava_export import export_llava, import_llava
from .upstream import ConversionError, convert_upstream

__all__ = ["ConversionError", "convert_upstream", "export_llava", "import_llava"]
