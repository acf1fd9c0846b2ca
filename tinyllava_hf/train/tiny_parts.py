"""Tiny "pretrained" parts and a tiny shapes dataset, saved as ordinary Hugging Face folders.

The debug recipes and the training tests build a TinyLLaVA model from parts exactly as a real run would (a causal LM
folder, a vision tower folder, optionally a Whisper folder), only with random weights a few kilobytes large, so the
whole pipeline runs on a laptop CPU in seconds. Create them once with:

    python -m tinyllava_hf.train.tiny_parts outputs/tiny_parts

which writes

    outputs/tiny_parts/llm/        LlamaForCausalLM + its byte-level BPE tokenizer (no <image> token, no pad token)
    outputs/tiny_parts/siglip/     SiglipVisionModel + SigLIP image processor
    outputs/tiny_parts/whisper/    WhisperModel + Whisper feature extractor (1 s windows)
    outputs/tiny_parts/data/       pretrain.json, finetune.json, audio.json (LLaVA format, media paths relative to
                                   this folder: the recipes' image_folder) + images/ and audio/
"""

import argparse
import json
import math
import wave
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

__all__ = ["COLORS", "SHAPES", "draw_shape", "make_shapes_dataset", "save_tiny_parts", "tiny_llm_tokenizer"]

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
IMAGE_SIZE = 32  # SigLIP input side: a 4x4 patch grid with 8 px patches
PATCH_SIZE = 8
HIDDEN = 32
SAMPLING_RATE = 16000

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
    """A byte-level BPE tokenizer with llama-like specials (`<unk>`, `<s>`, `</s>`), trained in-process.

    Like TinyLlama's, it has no pad token and no `<image>` token: the builder must add both.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    # BOS is added at encode time, as llama tokenizers (and upstream TinyLLaVA's prompts) expect.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _save_llm(out_dir: Path, seed: int) -> None:
    tokenizer = tiny_llm_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),  # exactly the tokenizer: adding <image> must resize the embeddings
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        # Wider than the usual 0.02: with 32 channels that would give near-uniform logits, hiding what training does.
        initializer_range=0.1,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _save_siglip(out_dir: Path, seed: int) -> None:
    config = SiglipVisionConfig(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    torch.manual_seed(seed + 1)
    SiglipVisionModel(config).save_pretrained(out_dir)
    SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(out_dir)


def _save_whisper(out_dir: Path, seed: int) -> None:
    # 1 s windows: 100 mel frames, which the encoder's stride-2 convolution turns into 50 positions.
    config = WhisperConfig(
        d_model=HIDDEN,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=2 * HIDDEN,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=2 * HIDDEN,
        num_mel_bins=80,
        max_source_positions=50,
        max_target_positions=64,
        vocab_size=64,
        # The decoder is never used (TinyLLaVA keeps the encoder), but its special ids must fit its tiny vocab.
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    torch.manual_seed(seed + 2)
    WhisperModel(config).save_pretrained(out_dir)
    WhisperFeatureExtractor(
        feature_size=80, sampling_rate=SAMPLING_RATE, hop_length=160, chunk_length=1
    ).save_pretrained(out_dir)


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
                    {"from": "human", "value": "<image>\nDescribe the picture."},
                    {"from": "gpt", "value": f"a {color} {shape}"},
                ],
            }
        )
        finetune.append(
            {
                "id": f"finetune-{i:04d}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat shape is in the image?"},
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
                    {"from": "human", "value": "<audio>\nWhat is said in the audio clip?"},
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
        paths[key].write_text(json.dumps(records, indent=1))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Save tiny LM/vision/audio parts and shapes data for debug recipes.")
    parser.add_argument("out_dir", nargs="?", default="outputs/tiny_parts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, path in save_tiny_parts(args.out_dir, seed=args.seed).items():
        print(f"{name:13s} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
