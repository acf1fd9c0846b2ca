"""Tiny random components for tests: a byte-level BPE tokenizer trained in-process and small configs per family.

Nothing here touches the network: every model is built from its config, every tokenizer from a few lines of text.
"""

import copy
from functools import cache

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessorPil,
    PreTrainedTokenizerFast,
    SiglipImageProcessorPil,
    WhisperFeatureExtractor,
)

from tinyllava_hf import TinyLlavaConfig
from tinyllava_hf.builder import build_processor

VOCAB_SIZE = 384  # LM vocab: a little above the tokenizer's size, as real checkpoints often pad it
IMAGE_SIZE = 16
PATCH_SIZE = 8
HIDDEN = 32

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
def _trained_backend() -> str:
    """The trained byte-level BPE (llama-like specials), serialised so every caller gets a fresh copy."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return tokenizer.to_str()


def tiny_base_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh tokenizer as an LM would ship it: no `<image>` / `<audio>` tokens yet."""
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_backend()),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


@cache
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The shared tiny tokenizer with `<image>` and `<audio>` special tokens (copy it before changing it)."""
    tokenizer = tiny_base_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "<audio>"]})
    assert len(tokenizer) <= VOCAB_SIZE
    return tokenizer


TEXT_CONFIGS = {
    "llama": dict(num_key_value_heads=2),
    "phi": dict(partial_rotary_factor=0.5),
    "stablelm": dict(num_key_value_heads=2),
    "gemma": dict(num_key_value_heads=1, head_dim=8),
    "qwen2": dict(num_key_value_heads=2, tie_word_embeddings=True),
}

VISION_CONFIGS = {
    "clip": dict(model_type="clip_vision_model"),
    "siglip": dict(model_type="siglip_vision_model"),
    "dinov2": dict(model_type="dinov2"),
}

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


def text_config(family: str) -> dict:
    tokenizer = tiny_tokenizer()
    return dict(
        model_type=family,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TEXT_CONFIGS[family],
    )


def vision_config(tower: str) -> dict:
    return dict(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        **VISION_CONFIGS[tower],
    )


def audio_config() -> dict:
    return dict(
        model_type="whisper",
        d_model=HIDDEN,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=2 * HIDDEN,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=2 * HIDDEN,
        num_mel_bins=80,
        max_source_positions=50,  # 1 s of 16 kHz audio: 100 mel frames -> 50 encoder frames
        vocab_size=64,
        # Special ids inside the tiny vocabulary (the Whisper defaults point past it); only the encoder is used.
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )


def tiny_config(
    family: str = "llama", tower: str = "siglip", connector: str = "mlp2x_gelu", audio: bool = False, **overrides
) -> TinyLlavaConfig:
    """A tiny TinyLlavaConfig for one point of the (LM family x tower x connector) matrix."""
    tokenizer = tiny_tokenizer()
    kwargs = dict(
        text_config=text_config(family),
        vision_config=vision_config("clip" if connector == "mof" else tower),
        connector_type=connector,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        audio_token_id=tokenizer.convert_tokens_to_ids("<audio>"),
        **CONNECTOR_SETTINGS.get(connector, {}),
    )
    if connector == "mof":
        kwargs["vision_aux_config"] = vision_config("dinov2")
    if audio:
        kwargs["audio_config"] = audio_config()
        kwargs["audio_downsample_factor"] = 2
    kwargs.update(overrides)
    return TinyLlavaConfig(**kwargs)


def tiny_feature_extractor():
    """Whisper features for 1 s windows, matching `audio_config()`'s 50 encoder frames."""
    return WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, hop_length=160, chunk_length=1)


def scramble(model, seed: int = 0, std: float = 0.5):
    """Overwrite every floating parameter with N(0, std): random-init logits are too flat for greedy-decoding
    comparisons to mean anything (every prompt would produce the same tokens)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point():
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model


def tiny_processor(config: TinyLlavaConfig, tower: str = "siglip", template: str = "llama"):
    """A processor for `config` (updates its placeholder ids), with an upstream chat template as default."""
    return build_processor(
        config,
        copy.deepcopy(tiny_tokenizer()),
        tiny_image_processor(tower),
        feature_extractor=tiny_feature_extractor() if config.audio_config is not None else None,
        template=template,
    )


def tiny_image_processor(tower: str = "siglip"):
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    if tower == "siglip":
        return SiglipImageProcessorPil(size=size)
    return CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size=size)


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
