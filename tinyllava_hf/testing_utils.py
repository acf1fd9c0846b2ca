"""Tiny random TinyLLaVA models, processors and inputs for tests (as `transformers.testing_utils` is for transformers).

Built on the package's one tiny-parts builder (`tinyllava_hf.train.tiny_parts`). Nothing here touches the network:
every model is built from its config, every tokenizer from a few lines of text. The test suite's fixtures
(`tests/conftest.py`) wrap these; test modules that parametrise over the matrix import the tables directly.
"""

import copy
from functools import cache

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerFast

from .builder import build_processor
from .configuration_tinyllava import TinyLlavaConfig
from .constants import AUDIO_TOKEN, IMAGE_TOKEN
from .train.tiny_parts import (
    LLAMA_SPECIAL_TOKENS,
    TEXT_FAMILIES,
    VISION_TOWERS,
    image_processor,
    text_config,
    train_bpe_tokenizer,
    vision_config,
    whisper_config,
    whisper_feature_extractor,
)

__all__ = [
    "CONNECTOR_SETTINGS",
    "IMAGE_SIZE",
    "TEXT_FAMILIES",
    "VISION_TOWERS",
    "VOCAB_SIZE",
    "random_audio",
    "random_image",
    "scramble",
    "tiny_base_tokenizer",
    "tiny_config",
    "tiny_feature_extractor",
    "tiny_image_processor",
    "tiny_processor",
    "tiny_tokenizer",
]

VOCAB_SIZE = 384  # LM vocab: a little above the tokenizer's size, as real checkpoints often pad it
IMAGE_SIZE = 16

# Connector sizes that fit the 32-wide tiny models (the others need no settings).
CONNECTOR_SETTINGS = {
    "identity": {},
    "linear": {},
    "mlp2x_gelu": {},
    "mlp3x_gelu": {},
    "qformer": dict(
        connector_num_queries=4, connector_num_heads=4, qformer_hidden_size=16, qformer_intermediate_size=24
    ),
    "resampler": dict(connector_num_queries=4, connector_num_heads=2, connector_head_dim=8),
}

_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What shape is in the image? ASSISTANT: circle",
    "USER: What color is the shape? ASSISTANT: The shape is red.",
    "USER: Is there a triangle? ASSISTANT: yes",
    "USER: Does this image contain a blue rectangle? ASSISTANT: no",
    "green yellow gray black teal brown purple orange square triangle rectangle circle",
    "Answer the question using a single word or phrase.",
    "What is said in the audio clip? Describe the picture in detail.",
] * 4


@cache
def _trained_tokenizer() -> PreTrainedTokenizerFast:
    # Trained once per process; callers get copies.
    return train_bpe_tokenizer(
        _CORPUS, vocab_size=320, special_tokens=(*LLAMA_SPECIAL_TOKENS, "<pad>"), pad_token="<pad>"
    )


def tiny_base_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh tokenizer as an LM would ship it: no `<image>` / `<audio>` tokens yet."""
    return copy.deepcopy(_trained_tokenizer())


@cache
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The shared tiny tokenizer with `<image>` and `<audio>` special tokens (copy it before changing it)."""
    tokenizer = tiny_base_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, AUDIO_TOKEN]})
    assert len(tokenizer) <= VOCAB_SIZE
    return tokenizer


def tiny_config(
    family: str = "llama", tower: str = "siglip", connector: str = "mlp2x_gelu", audio: bool = False, **overrides
) -> TinyLlavaConfig:
    """A tiny TinyLlavaConfig for one point of the (LM family x tower x connector) matrix."""
    tokenizer = tiny_tokenizer()
    kwargs = dict(
        text_config=text_config(family, vocab_size=VOCAB_SIZE, tokenizer=tokenizer, max_position_embeddings=256),
        vision_config=vision_config("clip" if connector == "mof" else tower, image_size=IMAGE_SIZE),
        connector_type=connector,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        audio_token_id=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN),
        **CONNECTOR_SETTINGS.get(connector, {}),
    )
    if connector == "mof":
        kwargs["vision_aux_config"] = vision_config("dinov2", image_size=IMAGE_SIZE)
    if audio:
        kwargs["audio_config"] = whisper_config()
        kwargs["audio_downsample_factor"] = 2
    kwargs.update(overrides)
    return TinyLlavaConfig(**kwargs)


def tiny_feature_extractor():
    """Whisper features for 1 s windows, matching the tiny audio config's 50 encoder frames."""
    return whisper_feature_extractor()


def tiny_image_processor(tower: str = "siglip"):
    return image_processor(tower, IMAGE_SIZE)


def tiny_processor(config: TinyLlavaConfig, tower: str = "siglip", template: str = "llama"):
    """A processor for `config` (updates its placeholder ids), with an upstream chat template as default."""
    return build_processor(
        config,
        copy.deepcopy(tiny_tokenizer()),
        tiny_image_processor(tower),
        feature_extractor=tiny_feature_extractor() if config.audio_config is not None else None,
        template=template,
    )


def scramble(model, seed: int = 0, std: float = 0.5):
    """Overwrite every floating parameter with N(0, std): random-init logits are too flat for greedy-decoding
    comparisons to mean anything (every prompt would produce the same tokens)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point():
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model


def random_image(seed: int, size: tuple[int, int] = (24, 20)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def random_audio(seed: int, seconds: float = 0.6) -> np.ndarray:
    """A deterministic 16 kHz waveform (a chirp plus noise)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.5 * np.sin(2 * np.pi * (200 + 300 * seed) * t * (1 + t)) + 0.05 * rng.standard_normal(t.size)).astype(
        np.float32
    )
