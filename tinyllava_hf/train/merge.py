"""`merge-lora ADAPTER_DIR OUT`: fold a LoRA adapter (and its fully trained modules) into its base model.

The base model is the adapter's `base_model_name_or_path` (for runs built from parts: `<output_dir>/base_model`),
loaded in full precision even when the adapter was trained with QLoRA. The merged folder is an ordinary TinyLLaVA
checkpoint with the processor next to it.
"""

import logging
from pathlib import Path

from transformers import AutoModelForImageTextToText, AutoProcessor

from .build import torch_dtype

__all__ = ["merge_lora"]

logger = logging.getLogger(__name__)


def merge_lora(
    adapter_dir: str | Path, out_dir: str | Path, base_model: str | Path | None = None, dtype: str = "float32"
) -> Path:
    """Merge the adapter in `adapter_dir` into its base and save model + processor to `out_dir`.

    Args:
        adapter_dir: a folder written by `tinyllava-hf train` with `tune_llm` lora/qlora.
        out_dir: where to write the merged checkpoint.
        base_model: override of the adapter's recorded base checkpoint.
        dtype: dtype to load the base in and save (float32, bfloat16, float16).

    Returns:
        `out_dir`.
    """
    from peft import PeftConfig, PeftModel

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    base_path = base_model or PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path
    if not base_path:
        raise ValueError(f"{adapter_dir} records no base model; pass base_model.")
    base = AutoModelForImageTextToText.from_pretrained(base_path, dtype=torch_dtype(dtype))
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    # The training-time base path is meaningless next to merged weights.
    merged.config._name_or_path = str(out_dir)
    merged.save_pretrained(out_dir)
    has_processor = (adapter_dir / "processor_config.json").is_file()
    AutoProcessor.from_pretrained(adapter_dir if has_processor else base_path).save_pretrained(out_dir)
    logger.info("Merged %s into %s -> %s", adapter_dir, base_path, out_dir)
    return out_dir
