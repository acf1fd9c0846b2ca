"""`merge-lora ADAPTER_DIR OUT`: fold a LoRA adapter (and its fully trained modules) into its base model.

The base model is the adapter's `base_model_name_or_path` (for runs built from parts: `<output_dir>/base_model`),
loaded in full precision even when the adapter was trained with QLoRA. The merged folder is an ordinary TinyLLaVA
checkpoint with the processor next to it.
"""

import logging
from pathlib import Path

from ..files import atomic_output_dir, check_destination, check_not_overlapping
from ..loading import ModelLoadError, resolve_model_source

__all__ = ["MergeError", "merge_lora"]

logger = logging.getLogger(__name__)


class MergeError(ValueError):
    """An adapter, base model or output that merge-lora cannot use; the message names it and the fix."""


def _check_inputs(adapter_dir: Path, out_dir: Path, base_model: str | Path | None, overwrite: bool) -> str:
    """Everything merge-lora can check before loading a weight; returns the base model's path or Hub id."""
    import json

    if not (adapter_dir / "adapter_config.json").is_file():
        what = (
            "does not exist" if not adapter_dir.exists() else "is not a LoRA adapter folder (no adapter_config.json)"
        )
        raise MergeError(
            f"{adapter_dir} {what}: give the output_dir (or a checkpoint-*) of a `tinyllava-hf train` run with "
            "tune_llm lora or qlora"
        )
    check_not_overlapping(adapter_dir, out_dir, error=MergeError, what="adapter folder")
    recorded = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    base_path = str(base_model or recorded or "")
    if not base_path:
        raise MergeError(f"{adapter_dir}/adapter_config.json records no base model; pass --base-model")
    try:
        base_path, base_is_local = resolve_model_source(base_path)
    except ModelLoadError as error:
        fix = "" if base_model else " (recorded in adapter_config.json; pass --base-model to give another)"
        raise MergeError(f"base model: {error}{fix}") from None
    if base_is_local:
        check_not_overlapping(base_path, out_dir, error=MergeError, what="base model folder")
    check_destination(out_dir, overwrite, error=MergeError)
    return base_path


def merge_lora(
    adapter_dir: str | Path,
    out_dir: str | Path,
    base_model: str | Path | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Merge the adapter in `adapter_dir` into its base and save model + processor (and the project's model card)
    to `out_dir`, atomically.

    Args:
        adapter_dir: a folder written by `tinyllava-hf train` with `tune_llm` lora/qlora.
        out_dir: where to write the merged checkpoint; it may not be, contain or lie in the adapter or base folder.
        base_model: override of the adapter's recorded base checkpoint.
        dtype: dtype to load the base in and save (float32, bfloat16, float16).
        overwrite: replace an existing non-empty `out_dir`.

    Returns:
        `out_dir`.

    Raises:
        MergeError: not an adapter folder, a missing base model, an overlapping or existing output.
    """
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..hub import write_checkpoint_card
    from .build import torch_dtype

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    base_path = _check_inputs(adapter_dir, out_dir, base_model, overwrite)
    base = AutoModelForImageTextToText.from_pretrained(base_path, dtype=torch_dtype(dtype))
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    # The training-time base path is meaningless next to merged weights.
    merged.config._name_or_path = str(out_dir)
    has_processor = (adapter_dir / "processor_config.json").is_file()
    # The processor the run trained with (it carries every named chat template), else the base's.
    processor = AutoProcessor.from_pretrained(adapter_dir if has_processor else base_path)
    with atomic_output_dir(out_dir, overwrite=overwrite, error=MergeError) as tmp:
        merged.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    write_checkpoint_card(
        out_dir,
        f"Merged by `tinyllava-hf merge-lora` from the LoRA adapter `{adapter_dir.absolute()}` and its base model "
        f"`{base_path}`, in {dtype}.",
        tags=["lora-merged"],
    )
    logger.info("Merged %s into %s -> %s", adapter_dir, base_path, out_dir)
    return out_dir
