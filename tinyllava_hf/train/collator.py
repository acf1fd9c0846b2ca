"""`TinyLlavaCollator`: chat-template tokenisation, assistant-only labels, placeholder-safe truncation, right padding
(or padding-free packing into rows filled up to a token budget, `tinyllava_hf.train.packing`).

TRL's `SFTTrainer` computes the loss from the backbone's hidden states and `lm_head` directly (its fused LM head),
not through our model's `forward`, so the labels built here are the whole truth: `-100` everywhere except the
assistant answers and the end-of-turn text that the chat template marks with `{% generation %}`, and always `-100` on
image/audio placeholders.

Truncation never cuts through media placeholders: the model scatters exactly `num_image_tokens` features per image,
so a partial run would fail (or, worse, silently misalign) in the forward. A sample longer than `max_length` whose
placeholders all sit inside the first `max_length` tokens loses its text tail; one whose placeholders do not fit is
dropped and counted (`on_overlength="drop"`) or raises `OverlengthError` naming the sample (`"error"`).
"""

import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from datasets import Dataset
from PIL import Image
from transformers import ProcessorMixin
from transformers.utils.chat_template_utils import render_jinja_template

from ..constants import IGNORE_INDEX
from .data import BadSampleError, load_audio, load_image
from .packing import MEDIA_KEYS, pack_samples, plan_rows

# With a trimming processor (`trim_audio_padding`) each clip's real log-mel frames travel with its features.
AUDIO_MASK_KEY = "feature_attention_mask"

__all__ = ["NothingToTrainError", "OverlengthError", "SampleLayout", "TinyLlavaCollator", "filter_overlength"]

logger = logging.getLogger(__name__)


class OverlengthError(ValueError):
    """A sample whose media placeholders do not fit `max_length`."""


class NothingToTrainError(ValueError):
    """No sample of a split keeps an answer token to train on (all dropped, or every answer truncated away)."""


@dataclass(frozen=True)
class SampleLayout:
    """Token length of a tokenised sample and the end of its last media placeholder run (0 without media)."""

    length: int
    media_end: int
    # Position of the first token the loss trains on (an answer token), or None when the sample has none: a sample
    # whose first target lies at or beyond max_length trains nothing once truncated.
    first_target: int | None = None

    def fits(self, max_length: int | None) -> bool:
        """True when nothing has to go, or when only text after the last placeholder has to."""
        return max_length is None or self.media_end <= max_length


@dataclass
class TinyLlavaCollator:
    """Collate normalised rows (`tinyllava_hf.train.data`) into model inputs with labels.

    Rows hold `id`, `messages_json` (or `messages`), `images` and `audios` (file paths, or already loaded PIL images /
    waveforms). The output holds `input_ids`, `attention_mask`, `labels` (all `(batch, length)`, right padded) and,
    only when the batch has any, `pixel_values` `(num_images, 3, H, W)` and `input_features` `(num_audios, mels,
    frames)`: rows without media contribute no tensors, since the model scatters features by placeholder position.

    Args:
        processor: a TinyLLaVA processor with the chat template to train on.
        max_length: longest tokenised sample (SFTConfig's `max_length`); `None` never truncates.
        on_overlength: `drop` or `error`, for samples whose placeholders do not fit `max_length`.
        skip_bad_samples: drop (and count) samples whose media cannot be read instead of raising.
        pad_to_multiple_of: pad the sequence length up to a multiple of this.
        dummy_media: give every batch at least one image (and, for audio models, one audio clip): a blank one on
            placeholders after the first row's end, masked from attention and labels. DeepSpeed ZeRO-3 gathers a
            tower's weights collectively, so a rank whose batch skipped the tower would hang the others; the
            trainer turns this on under ZeRO-3. The blank medium changes neither the loss nor any gradient.
        packing: padding-free batches: the samples back to back in rows, with per-sample `position_ids` and no
            `attention_mask` (`tinyllava_hf.train.packing`); the trainer turns this on for `padding_free: true`.
        max_tokens_per_row: with `packing`, the token budget of a packed row (the recipe's `packing_token_budget`):
            a batch's samples are bin-packed into as many rows as needed; None puts the whole batch in one row.
    """

    processor: ProcessorMixin
    max_length: int | None = None
    on_overlength: Literal["drop", "error"] = "drop"
    skip_bad_samples: bool = False
    pad_to_multiple_of: int | None = None
    dummy_media: bool = False
    packing: bool = False
    max_tokens_per_row: int | None = None
    stats: Counter = field(default_factory=Counter)

    def __post_init__(self):
        if self.on_overlength not in ("drop", "error"):
            raise ValueError(f"on_overlength must be 'drop' or 'error', got {self.on_overlength!r}")
        tokenizer = self.processor.tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_token_id is None:
            raise ValueError("The tokenizer has neither a pad nor an eos token to pad with.")
        self.placeholder_ids = [self.processor.image_token_id]
        if getattr(self.processor, "audio_token_id", None) is not None:
            self.placeholder_ids.append(self.processor.audio_token_id)
        self.sampling_rate = (
            self.processor.feature_extractor.sampling_rate if hasattr(self.processor, "feature_extractor") else None
        )

    # ------------------------------------------------------------------------------------------------- measuring

    @staticmethod
    def _messages(example: Mapping[str, Any]) -> list[dict]:
        if "messages_json" in example:
            return json.loads(example["messages_json"])
        return [dict(message) for message in example["messages"]]

    def measure(self, example: Mapping[str, Any]) -> SampleLayout:
        """Length and last placeholder end of `example` after placeholder expansion, without loading any media.

        Renders the template and tokenises the text with a single `<image>`/`<audio>` per medium, then accounts for
        each one's expansion: exactly what the processor's own expansion produces, since the markers are special
        tokens that tokenise alone.
        """
        # Rendered as `apply_chat_template` renders it, with the character spans of the `{% generation %}` blocks
        # (the answers the labels keep) that its `return_assistant_tokens_mask` maps to tokens.
        template = self.processor.chat_template
        template = template["default"] if isinstance(template, Mapping) else template
        tokenizer = self.processor.tokenizer
        rendered, spans = render_jinja_template(
            conversations=[self._messages(example)],
            chat_template=template,
            return_assistant_tokens_mask=True,
            **tokenizer.special_tokens_map,
        )
        text = rendered[0]
        add_special = not (tokenizer.bos_token is not None and text.startswith(tokenizer.bos_token))
        encoded = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
        answer_starts = [start for start, end in spans[0] if end > start]
        first_char = min(answer_starts) if answer_starts else None
        expansion = {self.processor.image_token_id: self.processor.num_image_tokens}
        audio_token_id = getattr(self.processor, "audio_token_id", None)
        audio_counts = iter(self._audio_token_counts(example)) if audio_token_id is not None else iter(())
        length = media_end = 0
        first_target = None
        for token, (_, token_end) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
            if first_target is None and first_char is not None and token_end > first_char:
                first_target = length
            if token == audio_token_id:
                length += next(audio_counts, self.processor.num_audio_tokens)
                media_end = length
                continue
            length += expansion.get(token, 1)
            if token in expansion:
                media_end = length
        return SampleLayout(length=length, media_end=media_end, first_target=first_target)

    def _audio_token_counts(self, example: Mapping[str, Any]) -> list[int]:
        """Placeholders of each of `example`'s clips, in order, as the processor expands them: a whole window each,
        or, with `trim_audio_padding`, the clip's own count (from the file header or the array length; no decoding).
        A clip whose length cannot be read counts a whole window, an upper bound."""
        processor = self.processor
        audios = example.get("audios") or []
        if not getattr(processor, "trim_audio_padding", False):
            return [processor.num_audio_tokens] * len(audios)
        hop = processor.feature_extractor.hop_length
        counts = []
        for audio in audios:
            try:
                if isinstance(audio, str):
                    import soundfile

                    info = soundfile.info(audio)
                    samples = round(info.frames * self.sampling_rate / info.samplerate)
                else:
                    samples = len(audio)
            except Exception:  # unreadable here: the collator reports it when it loads the clip
                counts.append(processor.num_audio_tokens)
                continue
            counts.append(processor.audio_token_count(math.ceil(samples / hop)))
        return counts

    # ------------------------------------------------------------------------------------------------- collating

    def _load_media(self, example: Mapping[str, Any]) -> tuple[list[Image.Image], list]:
        sample_id = str(example.get("id", "?"))
        images = [
            load_image(image, sample_id) if not isinstance(image, Image.Image) else image.convert("RGB")
            for image in example.get("images") or []
        ]
        audios = []
        for audio in example.get("audios") or []:
            if self.sampling_rate is None:
                raise BadSampleError(sample_id, "has audio but the processor has no audio feature extractor")
            audios.append(load_audio(audio, sample_id, self.sampling_rate) if isinstance(audio, str) else audio)
        return images, audios

    @staticmethod
    def _attach_media(messages: list[dict], images: list, audios: list, sample_id: str) -> None:
        """Put each loaded medium into its block, in order: the processor collects them from there."""
        pending = {"image": iter(images), "audio": iter(audios)}
        for message in messages:
            if isinstance(message["content"], str):
                continue
            for block in message["content"]:
                kind = block.get("type")
                if kind in pending:
                    try:
                        block[kind] = next(pending[kind])
                    except StopIteration:
                        raise BadSampleError(sample_id, f"has more <{kind}> blocks than {kind} files") from None
        for kind, remaining in pending.items():
            if next(remaining, None) is not None:
                raise BadSampleError(sample_id, f"has more {kind} files than <{kind}> blocks")

    def encode(self, example: Mapping[str, Any]) -> dict[str, torch.Tensor] | None:
        """Tokenise one row: `input_ids`, `labels` (1-D) and its media tensors; `None` when the row is dropped."""
        sample_id = str(example.get("id", "?"))
        try:
            images, audios = self._load_media(example)
            messages = self._messages(example)
            self._attach_media(messages, images, audios, sample_id)
        except BadSampleError as error:
            if not self.skip_bad_samples:
                raise
            self.stats["skipped_bad_media"] += 1
            logger.warning("Skipping %s", error)
            return None

        out = self.processor.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
        )
        input_ids = out["input_ids"][0]
        assistant = torch.as_tensor(out["assistant_masks"][0], dtype=torch.bool)
        labels = input_ids.masked_fill(~assistant, IGNORE_INDEX)
        is_placeholder = torch.isin(input_ids, torch.tensor(self.placeholder_ids))
        labels = labels.masked_fill(is_placeholder, IGNORE_INDEX)  # features, never targets

        if self.max_length is not None and input_ids.shape[0] > self.max_length:
            positions = is_placeholder.nonzero()
            media_end = int(positions[-1]) + 1 if positions.numel() else 0
            if media_end > self.max_length:
                message = (
                    f"Sample {sample_id!r} has {input_ids.shape[0]} tokens and media placeholders up to position "
                    f"{media_end}, beyond max_length={self.max_length}; truncating would cut through them."
                )
                if self.on_overlength == "error":
                    raise OverlengthError(message + " Raise --max_length or use --on_overlength drop.")
                self.stats["dropped_overlength"] += 1
                logger.warning("Dropping: %s", message)
                return None
            input_ids, labels = input_ids[: self.max_length], labels[: self.max_length]
            self.stats["truncated"] += 1

        encoded = {"input_ids": input_ids, "labels": labels}
        if "pixel_values" in out:
            encoded["pixel_values"] = out["pixel_values"]
        if "input_features" in out:
            encoded["input_features"] = out["input_features"]
        if AUDIO_MASK_KEY in out:
            encoded[AUDIO_MASK_KEY] = out[AUDIO_MASK_KEY]
        return encoded

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        encoded = [item for item in (self.encode(example) for example in examples) if item is not None]
        self.stats["samples"] += len(encoded)
        if not encoded:
            # Every row of the batch was dropped. A one-token row with no target keeps the step alive (the loss is a
            # differentiable zero) instead of crashing a long run on a batch of bad samples.
            self.stats["empty_batches"] += 1
            logger.warning("Every sample of a batch was dropped; training on an empty (all -100) batch instead.")
            encoded = [
                {
                    "input_ids": torch.tensor([self.pad_token_id]),
                    "labels": torch.tensor([IGNORE_INDEX]),
                }
            ]

        if self.dummy_media:
            self._add_dummy_media(encoded[0], encoded)
        if self.packing:
            # Packing may reorder samples into rows; it orders the media to match.
            result = pack_samples(encoded, self.pad_token_id, self.pad_to_multiple_of, self.max_tokens_per_row)
            rows = plan_rows([item["input_ids"].shape[0] for item in encoded], self.max_tokens_per_row)
            order = [encoded[i] for row in rows for i in row]
        else:
            result = self._pad(encoded)
            order = encoded
        # One entry per medium in sample order: the model scatters them in that order.
        for key in (*MEDIA_KEYS, AUDIO_MASK_KEY):
            tensors = [item[key] for item in order if key in item]
            if tensors and key not in result:
                result[key] = torch.cat(tensors)
        return result

    def _pad(self, encoded: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Right-pad the samples into `(batch, length)` `input_ids`, `attention_mask` and `labels`."""
        length = max(item["input_ids"].shape[0] for item in encoded)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(encoded)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        for row, item in enumerate(encoded):
            size = item["input_ids"].shape[0]
            input_ids[row, :size] = item["input_ids"]
            labels[row, :size] = item["labels"]
            attention_mask[row, : item.get("num_attended", size)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def _blank_media(self) -> dict[str, tuple[int, int, torch.Tensor, dict]]:
        """Per media key: (placeholder id, placeholders per item, tensor of one blank item, extra tensors such as
        the audio's `feature_attention_mask`), computed once."""
        if not hasattr(self, "_blank_media_cache"):
            blank = Image.new("RGB", (32, 32))
            pixels = self.processor.image_processor(images=[blank], return_tensors="pt")["pixel_values"]
            media = {"pixel_values": (self.processor.image_token_id, self.processor.num_image_tokens, pixels, {})}
            if self.sampling_rate is not None:
                silence = np.zeros(self.sampling_rate // 10, dtype=np.float32)
                trim = getattr(self.processor, "trim_audio_padding", False)
                out = self.processor.feature_extractor(
                    silence, sampling_rate=self.sampling_rate, return_tensors="pt", return_attention_mask=trim
                )
                count, extra = self.processor.num_audio_tokens, {}
                if trim:
                    extra = {AUDIO_MASK_KEY: out["attention_mask"]}
                    count = self.processor.audio_token_count(int(out["attention_mask"].sum()))
                media["input_features"] = (self.processor.audio_token_id, count, out["input_features"], extra)
            self._blank_media_cache = media
        return self._blank_media_cache

    def _add_dummy_media(self, first: dict[str, torch.Tensor], encoded: list[dict[str, torch.Tensor]]) -> None:
        """Append a blank medium (and its placeholders, unattended and untrained) to `first` for each missing kind."""
        attended = first["input_ids"].shape[0]
        for key, (token_id, count, tensor, extra) in self._blank_media().items():
            if any(key in item for item in encoded):
                continue
            first["input_ids"] = torch.cat([first["input_ids"], torch.full((count,), token_id)])
            first["labels"] = torch.cat([first["labels"], torch.full((count,), IGNORE_INDEX)])
            first[key] = tensor
            first.update(extra)
            first["num_attended"] = attended
            self.stats[f"dummy_{key}"] += 1


def filter_overlength(
    dataset: Dataset, collator: TinyLlavaCollator, num_proc: int | None = None, split: str = "train"
) -> Dataset:
    """Drop (or, with `on_overlength="error"`, reject) the rows whose media placeholders do not fit `max_length`.

    Done once before training from the text alone (`TinyLlavaCollator.measure`), so that batches keep their size and
    the log reports exact counts; the collator applies the same rule again as a guard. Rows whose whole answer lies
    beyond `max_length` are kept but counted: they train nothing.

    Raises:
        OverlengthError: in `error` mode, naming the first offending samples.
        NothingToTrainError: when no row keeps an answer token (a run would "succeed" with loss 0 and train nothing,
            or, with every row dropped, fail deep inside the trainer).
    """
    if collator.max_length is None:
        return dataset
    max_length = collator.max_length

    def measure(row: Mapping[str, Any]) -> dict[str, int]:
        layout = collator.measure(row)
        first_target = -1 if layout.first_target is None else layout.first_target
        return {"num_tokens": layout.length, "media_end": layout.media_end, "first_target": first_target}

    measured = dataset.map(measure, num_proc=num_proc, desc="Measuring samples")
    too_long = [i for i, end in enumerate(measured["media_end"]) if end > max_length]
    truncated = sum(1 for n in measured["num_tokens"] if n > max_length) - len(too_long)
    if truncated:
        logger.info("%d sample(s) over max_length=%d lose text after their last placeholder.", truncated, max_length)
    dropped = set(too_long)
    no_answer = [i for i, first in enumerate(measured["first_target"]) if i not in dropped and first < 0]
    answer_cut = [i for i, first in enumerate(measured["first_target"]) if i not in dropped and first >= max_length]
    if too_long:
        examples = ", ".join(
            f"{measured[i]['id']!r} (placeholders end at {measured[i]['media_end']})" for i in too_long[:5]
        )
        message = (
            f"{len(too_long)} of {len(dataset)} sample(s) have media placeholders beyond max_length={max_length}: "
            f"{examples}{', ...' if len(too_long) > 5 else ''}"
        )
        if collator.on_overlength == "error":
            raise OverlengthError(message + ". Raise --max_length or use --on_overlength drop.")
        logger.warning("Dropping %s", message)
    trained = len(dataset) - len(too_long) - len(no_answer) - len(answer_cut)
    if trained == 0:
        reasons = [
            f"{count} {why}"
            for count, why in (
                (len(too_long), "dropped: media placeholders beyond max_length (on_overlength: drop)"),
                (len(answer_cut), "with the whole answer beyond max_length (the prompt alone fills it)"),
                (len(no_answer), "with no answer text for the template to train on"),
            )
            if count
        ]
        longest = max(measured["num_tokens"], default=0)
        raise NothingToTrainError(
            f"Nothing to train on: 0 of {len(dataset)} {split} sample(s) keep an answer token within "
            f"max_length={max_length} ({'; '.join(reasons)}). Raise --max_length (the longest sample has {longest} "
            "tokens) or shorten the prompts."
        )
    if answer_cut:
        logger.warning(
            "%d of %d %s sample(s) have their whole answer beyond max_length=%d and train nothing.",
            len(answer_cut),
            len(dataset),
            split,
            max_length,
        )
        collator.stats["answer_truncated_upfront"] += len(answer_cut)
    if not too_long:
        return dataset
    collator.stats["dropped_overlength_upfront"] += len(too_long)
    keep = sorted(set(range(len(dataset))) - dropped)
    return dataset.select(keep)
