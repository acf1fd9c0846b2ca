"""tinyllava-hf: TinyLLaVA vision- and audio-language models as a transformers-native plugin.

Importing the package registers `tinyllava` with the transformers Auto classes, so `AutoConfig`, `AutoModel`,
`AutoModelForImageTextToText`, `AutoModelForCausalLM` and `AutoProcessor` resolve it without remote code.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

from .configuration_tinyllava import TinyLlavaConfig
from .connectors_tinyllava import build_connector, list_connectors
from .modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaModel, TinyLlavaPreTrainedModel

__version__ = "0.1.0"

AutoConfig.register(TinyLlavaConfig.model_type, TinyLlavaConfig, exist_ok=True)
AutoModel.register(TinyLlavaConfig, TinyLlavaModel, exist_ok=True)
AutoModelForImageTextToText.register(TinyLlavaConfig, TinyLlavaForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(TinyLlavaConfig, TinyLlavaForConditionalGeneration, exist_ok=True)

__all__ = [
    "TinyLlavaConfig",
    "TinyLlavaForConditionalGeneration",
    "TinyLlavaModel",
    "TinyLlavaPreTrainedModel",
    "build_connector",
    "list_connectors",
]
