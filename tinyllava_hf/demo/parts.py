"""The demo's parts, built from scratch and saved as ordinary Hugging Face folders.

No pretrained weights can be had offline, so the demo assembles a TinyLLaVA from:

    llm/            a tiny `LlamaForCausalLM` (random init) + a byte-level BPE tokenizer trained here on the
                    easy-VQA questions/answers/captions rendered through the chat templates (with `<image>` and
                    `<pad>` special tokens)
    vision_tower/   a small `SiglipVisionModel` (random init) for 64x64 images + its `SiglipImageProcessorPil`

`tinyllava-hf train --llm DIR/llm --vision-tower DIR/vision_tower ...` then builds the model exactly as it would from
real checkpoints. The sizes (`DemoPartsSpec` defaults) were chosen by measurement: see `docs/demo_measurements.md`.

Tokenizer design: the pre-tokenizer splits only at the role markers (" USER:", " ASSISTANT:"), not at spaces, so BPE
merges run across words. Every prompt starts with the same long system sentence, which the BPE then learns as one
token, and frequent question frames ("\\nwhat color is the") become single tokens too: a prompt is about 30 tokens
instead of 60. Splitting at " ASSISTANT:" keeps the answer (" blue") a separate piece, so the tokens of a training
sequence are exactly the prompt tokens (`add_generation_prompt=True`) followed by the answer tokens.

    python -m tinyllava_hf.demo.parts OUT_DIR
"""

import argparse
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from ..chat_templates import IMAGE_TOKEN, render_chat_template
from .data import EasyVqaQuestion, image_captions, load_split

__all__ = [
    "DEMO_TEMPLATE",
    "SPECIAL_TOKENS",
    "DemoPartsSpec",
    "build_llm",
    "build_vision_tower",
    "save_parts",
    "tokenizer_corpus",
    "train_tokenizer",
]

# The finetune/default chat template. All upstream conversation templates share one layout and differ only in the
# end-of-answer text; llama's "</s>" is our tokenizer's eos, so generation stops right after the answer.
DEMO_TEMPLATE = "llama"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN)
# Pieces the pre-tokenizer isolates: merges never cross them, so answers never fuse with the prompt before them.
_ROLE_MARKERS = r" ?(?:USER|ASSISTANT):"
# Text between special tokens, i.e. what the BPE actually sees.
_SPECIALS_RE = re.compile("|".join(re.escape(token) for token in SPECIAL_TOKENS))


@dataclass(frozen=True)
class DemoPartsSpec:
    """Sizes of the demo's parts (defaults: the measured choice, see `docs/demo_measurements.md`)."""

    vocab_size: int = 512  # BPE vocabulary including the special tokens
    llm_hidden: int = 128
    llm_layers: int = 2
    llm_heads: int = 4
    llm_kv_heads: int = 4
    llm_intermediate: int = 512
    image_size: int = 64  # easy-VQA images are 64x64: no resizing
    patch_size: int = 16  # 4x4 = 16 patches, i.e. 16 image tokens with the "full" select strategy
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate: int = 512
    seed: int = 0


def tokenizer_corpus(
    questions: Iterable[EasyVqaQuestion], captions: Iterable[str], template: str = DEMO_TEMPLATE
) -> Iterator[str]:
    """The text the tokenizer will encode, rendered through the templates and cut at special tokens.

    Finetune samples go through `template`, captions through `pretrain`, so the BPE learns the system sentence, the
    role markers, the question frames and the answers exactly as they appear in training and evaluation prompts.
    Each distinct sample is rendered once and repeated as often as it occurs (BPE merges follow frequencies).
    """
    for (text, answer), count in Counter((q.text, q.answer) for q in questions).items():
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
        yield from _pieces(render_chat_template(template, messages)) * count
    for caption, count in Counter(captions).items():
        messages = [
            {"role": "user", "content": [{"type": "image"}]},
            {"role": "assistant", "content": [{"type": "text", "text": caption}]},
        ]
        yield from _pieces(render_chat_template("pretrain", messages)) * count


def _pieces(text: str) -> list[str]:
    return [piece for piece in _SPECIALS_RE.split(text) if piece]


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with llama-like specials, `<pad>` and `<image>`, trained on `corpus`.

    BOS is added at encode time (as llama tokenizers do, and as the TinyLLaVA templates expect).
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_ROLE_MARKERS), behavior="isolated"),
            # use_regex=False: no split at spaces, so merges may span words (see the module docstring).
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=[IMAGE_TOKEN],
    )


def build_llm(tokenizer: PreTrainedTokenizerFast, spec: DemoPartsSpec) -> LlamaForCausalLM:
    """A randomly initialised Llama LM whose vocabulary is exactly the tokenizer's."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.llm_hidden,
        intermediate_size=spec.llm_intermediate,
        num_hidden_layers=spec.llm_layers,
        num_attention_heads=spec.llm_heads,
        num_key_value_heads=spec.llm_kv_heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def build_vision_tower(spec: DemoPartsSpec) -> tuple[SiglipVisionModel, SiglipImageProcessorPil]:
    """A randomly initialised SigLIP vision tower for `spec.image_size` images, and its image processor.

    SigLIP has no class token, so with `vision_feature_select_strategy="full"` every patch reaches the LM. Its
    pooling head is left out (`vision_use_head=False`): TinyLLaVA reads hidden states, never the pooled output.
    """
    config = SiglipVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        vision_use_head=False,
    )
    torch.manual_seed(spec.seed + 1)
    tower = SiglipVisionModel(config)
    size = {"height": spec.image_size, "width": spec.image_size}
    return tower, SiglipImageProcessorPil(size=size)


def save_parts(out_dir: str | Path, spec: DemoPartsSpec | None = None) -> dict[str, Path]:
    """Train the tokenizer, build both models and save them under `out_dir` (`llm/`, `vision_tower/`).

    Returns:
        `{"llm": ..., "vision_tower": ...}` folder paths.
    """
    spec = spec or DemoPartsSpec()
    out_dir = Path(out_dir)
    train = load_split("train")
    captions = [caption for _, caption in image_captions(train).values()]
    tokenizer = train_tokenizer(tokenizer_corpus(train, captions), spec.vocab_size)

    paths = {"llm": out_dir / "llm", "vision_tower": out_dir / "vision_tower"}
    build_llm(tokenizer, spec).save_pretrained(paths["llm"])
    tokenizer.save_pretrained(paths["llm"])
    tower, image_processor = build_vision_tower(spec)
    tower.save_pretrained(paths["vision_tower"])
    image_processor.save_pretrained(paths["vision_tower"])
    (out_dir / "parts_spec.json").write_text(json.dumps(asdict(spec), indent=1), encoding="utf-8")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Save the easy-VQA demo's LM and vision tower (random init).")
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    for name, path in save_parts(args.out_dir).items():
        print(f"{name:13s} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
