"""Constants shared across the package, each defined once.

Plain Python with no imports: `processing_tinyllava.py` ships as remote code and imports it as a flat sibling
(`from .constants import ...`), so this file travels with every saved checkpoint too.
"""

# The placeholder strings that mark media in prompts; the processor expands each into the model's placeholder tokens.
IMAGE_TOKEN = "<image>"
AUDIO_TOKEN = "<audio>"

# Label value that the loss ignores (PyTorch's `CrossEntropyLoss` default `ignore_index`, used by transformers).
IGNORE_INDEX = -100

__all__ = ["AUDIO_TOKEN", "IGNORE_INDEX", "IMAGE_TOKEN"]
