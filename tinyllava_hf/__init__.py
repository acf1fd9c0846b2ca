"""tinyllava-hf: TinyLLaVA vision- and audio-language models as a transformers-native plugin.

Importing the package registers `tinyllava` with the transformers Auto classes, so `AutoConfig`, `AutoModel`,
`AutoModelForImageTextToText`, `AutoModelForCausalLM` and `AutoProcessor` resolve it without remote code.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from .configuration_tinyllava import TinyLlavaConfig
from .connectors_tinyllava import build_connector, list_connectors
from .modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaModel, TinyLlavaPreTrainedModel
from .processing_tinyllava import TinyLlavaAudioProcessor, TinyLlavaProcessor

__version__ = "0.1.0"

AutoConfig.register(TinyLlavaConfig.model_type, TinyLlavaConfig, exist_ok=True)
AutoModel.register(TinyLlavaConfig, TinyLlavaModel, exist_ok=True)
AutoModelForImageTextToText.register(TinyLlavaConfig, TinyLlavaForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(TinyLlavaConfig, TinyLlavaForConditionalGeneration, exist_ok=True)
AutoProcessor.register(TinyLlavaConfig, TinyLlavaProcessor, exist_ok=True)
# Saved processors carry their own copy of the code for `trust_remote_code=True` users.
TinyLlavaProcessor.register_for_auto_class("AutoProcessor")
TinyLlavaAudioProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "TinyLlavaAudioProcessor",
    "TinyLlavaConfig",
    "TinyLlavaForConditionalGeneration",
    "TinyLlavaModel",
    "TinyLlavaPreTrainedModel",
    "TinyLlavaProcessor",
    "build_connector",
    "list_connectors",
]
