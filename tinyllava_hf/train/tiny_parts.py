"""Tiny parts built from scratch: the one builder of tiny tokenizers, configs and processors, and the debug parts.

Three users build TinyLLaVA parts at toy size, offline: the tests (`tinyllava_hf.testing_utils`), the debug recipes
(`save_tiny_parts` below) and the easy-VQA demo (`tinyllava_hf.demo.parts`). They all build them here:

- `train_bpe_tokenizer`: a byte-level BPE with llama-like specials, trained in-process on a few lines of text;
- `text_config` / `vision_config` / `whisper_config`: tiny config dicts per LM family / vision tower / Whisper;
- `image_processor` / `whisper_feature_extractor`: the matching processors;
- `random_model`: a seeded random model from such a config dict.

The debug recipes build a TinyLLaVA model from parts exactly as a real run would (a causal LM folder, a vision tower
folder, optionally a Whisper folder), only with random weights a few kilobytes large, so the whole pipeline runs on a
laptop CPU in seconds. Create them once with:

    tinyllava-hf tiny-parts outputs/tiny_parts

which writes

    outputs/tiny_parts/llm/        LlamaForCausalLM + its byte-level BPE tokenizer (no <image> token, no pad token)
    outputs/tiny_parts/siglip/     SiglipVisionModel + SigLIP image processor
    outputs/tiny_parts/whisper/    WhisperModel + Whisper feature extractor (1 s windows)
    outputs/tiny_parts/data/       pretrain.json, finetune.json, audio.json (LLaVA format, media paths relative to
                                   this folder: the recipes' image_folder) + images/ and audio/
"""

import math
import wave
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    CLIPImageProcessorPil,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    SiglipImageProcessorPil,
    WhisperFeatureExtractor,
)

from ..constants import AUDIO_TOKEN, IMAGE_TOKEN
from ..files import write_json_atomic

__all__ = [
    "COLORS",
    "LLAMA_SPECIAL_TOKENS",
    "SHAPES",
    "TEXT_FAMILIES",
    "VISION_TOWERS",
    "draw_shape",
    "image_processor",
    "make_shapes_dataset",
    "random_model",
    "save_tiny_parts",
    "text_config",
    "tiny_llm_tokenizer",
    "train_bpe_tokenizer",
    "vision_config",
    "whisper_config",
    "whisper_feature_extractor",
]

HIDDEN = 32  # width of every tiny tower and LM unless a caller asks for more
SAMPLING_RATE = 16000
LLAMA_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")

# What each LM family needs on top of the shared tiny sizes (4 heads of 8 channels).
TEXT_FAMILIES: dict[str, dict[str, Any]] = {
    "llama": dict(num_key_value_heads=2),
    "phi": dict(partial_rotary_factor=0.5),
    "stablelm": dict(num_key_value_heads=2),
    "gemma": dict(num_key_value_heads=1, head_dim=8),
    "qwen2": dict(num_key_value_heads=2, tie_word_embeddings=True),
}
# Vision tower name -> transformers model type of its vision model.
VISION_TOWERS = {"clip": "clip_vision_model", "siglip": "siglip_vision_model", "dinov2": "dinov2"}


def train_bpe_tokenizer(
    corpus: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = LLAMA_SPECIAL_TOKENS,
    *,
    pad_token: str | None = None,
    extra_special_tokens: Sequence[str] = (),
    pre_tokenizer: pre_tokenizers.PreTokenizer | None = None,
    added_tokens: Sequence[Any] = (),
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with llama-like specials (`<unk>`, `<s>`, `</s>`), trained on `corpus`.

    BOS is added at encode time, as llama tokenizers (and upstream TinyLLaVA's prompts) expect.

    Args:
        special_tokens: the trainer's special tokens, first in the vocabulary (add `<pad>` / `<image>` here to give
            them fixed low ids).
        pad_token: the tokenizer's pad token (None: none, as TinyLlama ships).
        extra_special_tokens: further tokens registered as special on the `PreTrainedTokenizerFast`.
        pre_tokenizer: default GPT-2's byte-level split at spaces.
        added_tokens: tokens added after training (e.g. a whole sentence as one `AddedToken`).
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    if added_tokens:
        tokenizer.add_tokens(list(added_tokens))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    kwargs: dict[str, Any] = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if pad_token is not None:
        kwargs["pad_token"] = pad_token
    if extra_special_tokens:
        kwargs["extra_special_tokens"] = list(extra_special_tokens)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **kwargs)


def text_config(
    family: str = "llama",
    *,
    vocab_size: int,
    tokenizer: PreTrainedTokenizerFast | None = None,
    hidden_size: int = HIDDEN,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    **overrides: Any,
) -> dict[str, Any]:
    """A tiny causal-LM config (as a dict with `model_type`) of `family`; special ids from `tokenizer` if given."""
    config = dict(
        model_type=family,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        **TEXT_FAMILIES[family],
    )
    if tokenizer is not None:
        config.update(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    config.update(overrides)
    return config


def vision_config(
    tower: str = "siglip",
    *,
    hidden_size: int = HIDDEN,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int | None = None,
    image_size: int = 16,
    patch_size: int = 8,
    **overrides: Any,
) -> dict[str, Any]:
    """A tiny vision tower config (as a dict with `model_type`): `tower` is a key of `VISION_TOWERS`."""
    return dict(
        model_type=VISION_TOWERS[tower],
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        image_size=image_size,
        patch_size=patch_size,
        **overrides,
    )


def whisper_config(hidden_size: int = HIDDEN, **overrides: Any) -> dict[str, Any]:
    """A tiny Whisper config (as a dict with `model_type`) for the 1 s windows of `whisper_feature_extractor`."""
    return dict(
        model_type="whisper",
        d_model=hidden_size,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=2 * hidden_size,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=2 * hidden_size,
        num_mel_bins=80,
        max_source_positions=50,  # 1 s of 16 kHz audio: 100 mel frames -> 50 encoder frames
        vocab_size=64,
        # TinyLLaVA keeps only the encoder, but the decoder's special ids must fit its tiny vocabulary (the Whisper
        # defaults point past it).
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        **overrides,
    )


def image_processor(tower: str = "siglip", image_size: int = 16) -> SiglipImageProcessorPil | CLIPImageProcessorPil:
    """The image processor of `tower` for `image_size` inputs (SigLIP resizes; CLIP-style resizes and crops)."""
    size = {"height": image_size, "width": image_size}
    if tower == "siglip":
        return SiglipImageProcessorPil(size=size)
    return CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size=size)


def whisper_feature_extractor() -> WhisperFeatureExtractor:
    """Whisper features for 1 s windows, matching `whisper_config()`'s 50 encoder positions."""
    return WhisperFeatureExtractor(feature_size=80, sampling_rate=SAMPLING_RATE, hop_length=160, chunk_length=1)


def random_model(config: dict[str, Any], seed: int, causal_lm: bool = False) -> PreTrainedModel:
    """A randomly initialised model of a config dict: `AutoModelForCausalLM` with `causal_lm`, else `AutoModel`."""
    auto_class = AutoModelForCausalLM if causal_lm else AutoModel
    torch.manual_seed(seed)
    return auto_class.from_config(AutoConfig.for_model(**config))


# ---------------------------------------------------------------------------------------------- the debug parts

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
IMAGE_SIZE = 32  # SigLIP input side: a 4x4 patch grid with 8 px patches

_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What shape is in the image? ASSISTANT: circle square triangle",
    "USER: What color is the shape? ASSISTANT: The shape is red. The shape is green.",
    "The shape is blue. The shape is yellow. a red circle, a green square, a blue triangle, a yellow circle",
    "USER: Describe the picture. ASSISTANT: a small picture of a shape on a white background",
    "USER: What is said in the audio clip? ASSISTANT: a high tone, a low tone",
    "USER: Say hello. ASSISTANT: Hello! How can I help you today?",
    "Answer the question using a single word or phrase. yes no",
] * 4


def tiny_llm_tokenizer() -> PreTrainedTokenizerFast:
    """The debug LM's tokenizer. Like TinyLlama's, it has no pad token and no `<image>` token: the builder must add
    both."""
    return train_bpe_tokenizer(_CORPUS, vocab_size=384)


def _save_llm(out_dir: Path, seed: int) -> None:
    tokenizer = tiny_llm_tokenizer()
    config = text_config(
        "llama",
        vocab_size=len(tokenizer),  # exactly the tokenizer: adding <image> must resize the embeddings
        tokenizer=tokenizer,
        tie_word_embeddings=False,
        # Wider than the usual 0.02: with 32 channels that would give near-uniform logits, hiding what training does.
        initializer_range=0.1,
    )
    random_model(config, seed, causal_lm=True).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _save_siglip(out_dir: Path, seed: int) -> None:
    config = vision_config("siglip", num_hidden_layers=3, image_size=IMAGE_SIZE)
    random_model(config, seed + 1).save_pretrained(out_dir)
    image_processor("siglip", IMAGE_SIZE).save_pretrained(out_dir)


def _save_whisper(out_dir: Path, seed: int) -> None:
    config = whisper_config(max_target_positions=64, begin_suppress_tokens=None, suppress_tokens=None)
    random_model(config, seed + 2).save_pretrained(out_dir)
    whisper_feature_extractor().save_pretrained(out_dir)


def draw_shape(shape: str, color: str, size: tuple[int, int] = (40, 32)) -> Image.Image:
    """A coloured shape on a white background (non-square by default, so `pad` aspect handling is exercised)."""
    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    side = min(width, height) * 0.7
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    if shape == "circle":
        draw.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        draw.rectangle(box, fill=COLORS[color])
    elif shape == "triangle":
        draw.polygon([(width / 2, top), (left, top + side), (left + side, top + side)], fill=COLORS[color])
    else:
        raise ValueError(f"Unknown shape {shape!r}; choose from {SHAPES}")
    return image


def _write_tone(path: Path, frequency: float, seconds: float = 0.5) -> None:
    """A 16 kHz mono 16-bit PCM WAV (stdlib `wave`, so no audio library is needed to make the data)."""
    t = np.arange(int(SAMPLING_RATE * seconds)) / SAMPLING_RATE
    samples = (0.4 * np.sin(2 * math.pi * frequency * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SAMPLING_RATE)
        handle.writeframes(samples.tobytes())


def make_shapes_dataset(
    out_dir: str | Path, num_samples: int = 48, num_text_only: int = 4, num_audio: int = 8
) -> dict[str, Path]:
    """Write tiny LLaVA-format datasets of coloured shapes (and tones) under `out_dir`.

    Returns:
        Paths: `pretrain` (caption data, one image per sample), `finetune` (multi-turn QA plus `num_text_only`
        text-only samples) and `audio` (tone questions with an `"audio"` key), whose media paths are relative to
        `out_dir` (their `image_folder`).
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    colors = list(COLORS)
    pretrain, finetune = [], []
    for i in range(num_samples):
        shape, color = SHAPES[i % len(SHAPES)], colors[(i // len(SHAPES)) % len(colors)]
        name = f"images/shape-{i:04d}.png"  # relative to the data folder, which is also the image folder
        draw_shape(shape, color).save(out_dir / name)
        pretrain.append(
            {
                "id": f"pretrain-{i:04d}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": f"{IMAGE_TOKEN}\nDescribe the picture."},
                    {"from": "gpt", "value": f"a {color} {shape}"},
                ],
            }
        )
        finetune.append(
            {
                "id": f"finetune-{i:04d}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": f"{IMAGE_TOKEN}\nWhat shape is in the image?"},
                    {"from": "gpt", "value": shape},
                    {"from": "human", "value": "What color is the shape?"},
                    {"from": "gpt", "value": f"The shape is {color}."},
                ],
            }
        )
    for i in range(num_text_only):
        finetune.append(
            {
                "id": f"text-{i:04d}",
                "conversations": [
                    {"from": "human", "value": "Say hello."},
                    {"from": "gpt", "value": "Hello! How can I help you today?"},
                ],
            }
        )
    audio = []
    for i in range(num_audio):
        high = i % 2 == 0
        name = f"audio/tone-{i:04d}.wav"
        _write_tone(out_dir / name, 1200.0 if high else 300.0)
        audio.append(
            {
                "id": f"audio-{i:04d}",
                "audio": name,
                "conversations": [
                    {"from": "human", "value": f"{AUDIO_TOKEN}\nWhat is said in the audio clip?"},
                    {"from": "gpt", "value": "a high tone" if high else "a low tone"},
                ],
            }
        )
    paths = {
        "pretrain": out_dir / "pretrain.json",
        "finetune": out_dir / "finetune.json",
        "audio": out_dir / "audio.json",
    }
    for key, records in (("pretrain", pretrain), ("finetune", finetune), ("audio", audio)):
        write_json_atomic(paths[key], records)
    return paths


def save_tiny_parts(out_dir: str | Path, seed: int = 0, data: bool = True) -> dict[str, Path]:
    """Save a tiny Llama LM, SigLIP tower and Whisper encoder (and, with `data`, the shapes datasets) under `out_dir`.

    Returns:
        `{"llm", "siglip", "whisper", "data"}` folder paths (plus the dataset paths of `make_shapes_dataset`).
    """
    out_dir = Path(out_dir)
    paths = {"llm": out_dir / "llm", "siglip": out_dir / "siglip", "whisper": out_dir / "whisper"}
    _save_llm(paths["llm"], seed)
    _save_siglip(paths["siglip"], seed)
    _save_whisper(paths["whisper"], seed)
    if data:
        paths["data"] = out_dir / "data"
        paths.update(make_shapes_dataset(paths["data"]))
    return paths
