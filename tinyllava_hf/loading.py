"""Loading a saved checkpoint for inference: the one place every command (eval, demo, chat, serve) loads a model."""

from __future__ import annotations

import os
from typing import Any

DTYPES = ("auto", "float32", "bfloat16", "float16")


def load_model_and_processor(
    model_dir: str | os.PathLike, device: str | None = None, dtype: str = "auto"
) -> tuple[Any, Any]:
    """Load a saved TinyLLaVA folder (or Hub id) with `AutoModelForImageTextToText` and `AutoProcessor`, in eval mode.

    `trust_remote_code=True` lets folders saved with their own code (and other image-text-to-text checkpoints) load
    too; `device` defaults to CUDA when available; `dtype` is one of `DTYPES`.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import tinyllava_hf  # noqa: F401  (registers the TinyLLaVA classes with the Auto factories)

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype: Any = dtype if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True, dtype=torch_dtype)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    return model.to(device).eval(), processor
