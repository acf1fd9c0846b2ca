"""The demo's parts, built from scratch and saved as ordinary Hugging Face folders.

No pretrained weights can be had offline, so the demo assembles a TinyLLaVA from:

    llm/            a tiny `LlamaForCausalLM` (random init) + a byte-level BPE tokenizer trained here on the
                    easy-VQA questions/answers/captions rendered through the chat templates (with `<image>` and
                    `<pad>` special tokens); the questions are the finetune data's, half of them rewritten the ways
                    people write (`data.natural_questions`), so "What" is a piece the model trains on
    vision_tower/   a small `SiglipVisionModel` for 64x64 images + its `SiglipImageProcessorPil`, trained from
                    scratch here for about half a minute to tell the colour and shape of the train images'
                    captions (`pretrain_vision_tower`), the stand-in for the image-caption pretraining that real
                    SigLIP/CLIP towers come with
    parts.json      the sizes used and the tower's pretraining curve

`tinyllava-hf train --llm DIR/llm --vision-tower DIR/vision_tower ...` then builds the model exactly as it would from
real checkpoints. The sizes (`DemoPartsSpec` defaults) were chosen by measurement: see `docs/demo_measurements.md`.

Tokenizer design: the pre-tokenizer splits only at the role markers (" USER:", " ASSISTANT:"), not at spaces, so BPE
merges run across words. Every prompt starts with the same long system sentence, which the BPE then learns as one
token, and frequent question frames ("\\nis there not a") become single tokens too: with a 512-token vocabulary a test
prompt holds 7.7 text tokens on average besides its image placeholders, against 42 for the same BPE splitting at
spaces. Splitting at " ASSISTANT:" keeps the answer (" blue") a separate piece, so the tokens of a training sequence
are exactly the prompt tokens (`add_generation_prompt=True`) followed by the answer tokens.

The generic pieces (BPE training, tiny configs, image processor) come from the package's one tiny-parts builder,
`tinyllava_hf.train.tiny_parts`; what is specific to the demo (its corpus and pre-tokenizer, the sizes, the tower's
caption pretraining) is here. `tinyllava-hf demo` builds the parts itself; on their own:

    python -c "from tinyllava_hf.demo.parts import save_parts; save_parts('outputs/demo/parts')"
"""

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import AddedToken, Regex, decoders, pre_tokenizers
from transformers import (
    GenerationConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    SiglipImageProcessorPil,
    SiglipVisionModel,
)

from ..chat_templates import DEFAULT_SYSTEM_PROMPT, render_chat_template
from ..constants import IGNORE_INDEX, IMAGE_TOKEN
from ..files import write_json_atomic
from ..train.tiny_parts import (
    LLAMA_SPECIAL_TOKENS,
    image_processor,
    random_model,
    text_config,
    train_bpe_tokenizer,
    vision_config,
)
from .data import COLORS, SHAPES, EasyVqaQuestion, caption_for, image_labels, load_split, natural_questions

__all__ = [
    "DEMO_TEMPLATE",
    "SPECIAL_TOKENS",
    "DemoPartsSpec",
    "build_llm",
    "build_vision_tower",
    "pretrain_vision_tower",
    "save_parts",
    "tokenizer_corpus",
    "train_tokenizer",
]

# The finetune/default chat template. All upstream conversation templates share one layout and differ only in the
# end-of-answer text; llama's "</s>" is our tokenizer's eos, so generation stops right after the answer.
DEMO_TEMPLATE = "llama"
SPECIAL_TOKENS = (*LLAMA_SPECIAL_TOKENS, "<pad>", IMAGE_TOKEN)
# Pieces the pre-tokenizer isolates: merges never cross them, so answers never fuse with the prompt before them.
_ROLE_MARKERS = r" ?(?:USER|ASSISTANT):"
# Text between special tokens, i.e. what the BPE actually sees.
_SPECIALS_RE = re.compile("|".join(re.escape(token) for token in SPECIAL_TOKENS))


@dataclass(frozen=True)
class DemoPartsSpec:
    """Sizes of the demo's parts (defaults: the measured choice, see `docs/demo_measurements.md`)."""

    vocab_size: int = 512  # BPE vocabulary including the special tokens
    split_words: bool = False  # BPE merges inside words only (+ the system sentence as one added token)
    tie_embeddings: bool = False  # LM input embeddings = output embeddings
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
    # Caption pretraining of the tower (see `pretrain_vision_tower`); 0 epochs leaves it at its random init.
    tower_pretrain_epochs: int = 12
    tower_pretrain_lr: float = 2e-3
    tower_pretrain_batch_size: int = 64
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


def train_tokenizer(
    corpus: Iterable[str], vocab_size: int = 512, split_words: bool = False
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with llama-like specials, `<pad>` and `<image>`, trained on `corpus`.

    BOS is added at encode time (as llama tokenizers do, and as the TinyLLaVA templates expect). With `split_words`
    merges stay inside words (GPT-2's pre-tokenization) and the system sentence is one added token instead.
    """
    pre_tokenizer = None  # GPT-2's byte-level split at spaces
    if not split_words:
        pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_ROLE_MARKERS), behavior="isolated"),
                # use_regex=False: no split at spaces, so merges may span words (see the module docstring).
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tokenizer = train_bpe_tokenizer(
        corpus,
        vocab_size,
        SPECIAL_TOKENS,
        pad_token="<pad>",
        extra_special_tokens=[IMAGE_TOKEN],
        pre_tokenizer=pre_tokenizer,
        added_tokens=[AddedToken(DEFAULT_SYSTEM_PROMPT, normalized=False)] if split_words else (),
    )
    # An answer is trained as " blue" (the space after "ASSISTANT:" belongs to it), so the decoded new tokens would
    # print as [' blue']. Like Llama's own tokenizers, drop one leading space of the decoded text: the quick start
    # prints ['blue']. Encoding is untouched.
    tokenizer.backend_tokenizer.decoder = decoders.Sequence(
        [decoders.ByteLevel(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return tokenizer


def build_llm(tokenizer: PreTrainedTokenizerFast, spec: DemoPartsSpec) -> LlamaForCausalLM:
    """A randomly initialised Llama LM whose vocabulary is exactly the tokenizer's."""
    config = text_config(
        "llama",
        vocab_size=len(tokenizer),
        tokenizer=tokenizer,
        hidden_size=spec.llm_hidden,
        intermediate_size=spec.llm_intermediate,
        num_hidden_layers=spec.llm_layers,
        num_attention_heads=spec.llm_heads,
        num_key_value_heads=spec.llm_kv_heads,
        tie_word_embeddings=spec.tie_embeddings,
    )
    model = random_model(config, spec.seed, causal_lm=True)
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
    config = vision_config(
        "siglip",
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        vision_use_head=False,
    )
    return random_model(config, spec.seed + 1), image_processor("siglip", spec.image_size)


def pretrain_vision_tower(
    tower: SiglipVisionModel,
    image_processor: SiglipImageProcessorPil,
    labels: Sequence[tuple[str, str | None, str | None]],
    epochs: int,
    lr: float = 2e-3,
    batch_size: int = 64,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
    num_threads: int | None = 1,
) -> list[dict[str, float]]:
    """Pretrain the tower from scratch to tell the colour and the shape in its captions, as real TinyLLaVA towers
    come pretrained (SigLIP/CLIP on image-caption pairs).

    Why: measured on easy-VQA, a random tower inside the VLM learns colour (a linear feature of the pixels) quickly,
    but shape hardly at all within the demo's budget: the LM only learns to read shape features once the tower makes
    them, and the tower only gets a useful gradient once the LM reads them. Trained directly on the caption words, the
    same tower learns shape in about a minute (`docs/demo_measurements.md`).

    The features trained are the ones the connector reads (`hidden_states[-1]`, `vision_feature_layer=-1`), mean
    pooled into two linear heads (8 colours, 3 shapes) that are thrown away afterwards. An attribute that the
    captions leave unknown is not a target.

    Args:
        labels: `(image path, colour or None, shape or None)` per training image (`data.image_labels`).
        epochs: passes over the images (0 does nothing).
        num_threads: torch threads while training (restored afterwards); None keeps the current setting. One by
            default: at this size a second thread gains little on an idle 2-core machine, and when another process
            holds a core, two threads spin-wait on each other: one epoch took 38 s instead of 4 s (measured).

    Returns:
        Per epoch: mean loss and training accuracy on colour and shape.
    """
    if epochs <= 0:
        return []
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        images = []
        for path, _, _ in labels:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        pixels = image_processor(images, return_tensors="pt")["pixel_values"]
        colors = torch.tensor([COLORS.index(c) if c else IGNORE_INDEX for _, c, _ in labels])
        shapes = torch.tensor([SHAPES.index(s) if s else IGNORE_INDEX for _, _, s in labels])

        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        heads = torch.nn.Linear(tower.config.hidden_size, len(COLORS) + len(SHAPES))
        params = [*tower.parameters(), *heads.parameters()]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        steps = epochs * -(-len(pixels) // batch_size)
        warmup = max(1, steps // 30)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)),
        )
        tower.train()
        history = []
        for epoch in range(epochs):
            total = Counter()
            for batch in torch.randperm(len(pixels), generator=generator).split(batch_size):
                hidden = tower(pixel_values=pixels[batch], output_hidden_states=True).hidden_states[-1]
                logits = heads(hidden.mean(dim=1))
                color_logits, shape_logits = logits[:, : len(COLORS)], logits[:, len(COLORS) :]
                loss = F.cross_entropy(color_logits, colors[batch], ignore_index=IGNORE_INDEX) + F.cross_entropy(
                    shape_logits, shapes[batch], ignore_index=IGNORE_INDEX
                )
                loss.backward()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                total["loss"] += loss.item() * len(batch)
                for name, scores, target in (
                    ("color", color_logits, colors[batch]),
                    ("shape", shape_logits, shapes[batch]),
                ):
                    known = target != IGNORE_INDEX
                    total[name] += int((scores.argmax(-1)[known] == target[known]).sum())
                    total[f"{name}_n"] += int(known.sum())
            row = {
                "epoch": epoch + 1,
                "loss": total["loss"] / len(pixels),
                "color_accuracy": total["color"] / max(1, total["color_n"]),
                "shape_accuracy": total["shape"] / max(1, total["shape_n"]),
            }
            history.append(row)
            if log is not None:
                log(
                    f"vision tower caption pretraining: epoch {epoch + 1}/{epochs} loss {row['loss']:.3f} "
                    f"colour {row['color_accuracy']:.3f} shape {row['shape_accuracy']:.3f}"
                )
        tower.eval()
        return history
    finally:
        torch.set_num_threads(previous_threads)


def save_parts(
    out_dir: str | Path, spec: DemoPartsSpec | None = None, log: Callable[[str], None] | None = print
) -> dict[str, Path]:
    """Train the tokenizer, build both models, caption-pretrain the tower and save them under `out_dir` (`llm/`,
    `vision_tower/`, and `parts.json` with the spec and the tower's pretraining curve).

    Returns:
        `{"llm": ..., "vision_tower": ...}` folder paths.
    """
    spec = spec or DemoPartsSpec()
    out_dir = Path(out_dir)
    train = load_split("train")
    labels = list(image_labels(train).values())
    captions = [caption_for(color, shape) for _, color, shape in labels]
    # The corpus holds the finetune stage's questions exactly as written to finetune.json (rewritten forms included).
    corpus = tokenizer_corpus(natural_questions(train), captions)
    tokenizer = train_tokenizer(corpus, spec.vocab_size, spec.split_words)

    paths = {"llm": out_dir / "llm", "vision_tower": out_dir / "vision_tower"}
    build_llm(tokenizer, spec).save_pretrained(paths["llm"])
    tokenizer.save_pretrained(paths["llm"])
    tower, image_processor = build_vision_tower(spec)
    history = pretrain_vision_tower(
        tower,
        image_processor,
        labels,
        spec.tower_pretrain_epochs,
        lr=spec.tower_pretrain_lr,
        batch_size=spec.tower_pretrain_batch_size,
        seed=spec.seed,
        log=log,
    )
    tower.save_pretrained(paths["vision_tower"])
    image_processor.save_pretrained(paths["vision_tower"])
    report = {"spec": asdict(spec), "vision_tower_pretraining": history}
    write_json_atomic(out_dir / "parts.json", report)
    return paths
