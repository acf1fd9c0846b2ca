"""Constants shared across the package, each defined once.

The placeholder strings are defined in `processing_tinyllava.py`, which ships as remote code and so cannot import
from `tinyllava_hf`; everything else takes them from here.
"""

from .processing_tinyllava import AUDIO_TOKEN, IMAGE_TOKEN

# Label value that the loss ignores (PyTorch's `CrossEntropyLoss` default `ignore_index`, used by transformers).
IGNORE_INDEX = -100

__all__ = ["AUDIO_TOKEN", "IGNORE_INDEX", "IMAGE_TOKEN"]
