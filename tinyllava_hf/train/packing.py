"""Padding-free packing: the samples of a batch back to back in rows filled up to a token budget, each sample with
own position ids.

    tinyllava-hf train --config RECIPE.yaml --padding_free true [--packing_token_budget 2048]

TRL refuses its own `padding_free`/`packing` for vision datasets, so the trainer takes `padding_free: true` away from
TRL and turns on `TinyLlavaCollator(packing=True)` instead, which calls `pack_samples` here. The packed batch is

    input_ids, labels, position_ids   (rows, row_length)   samples back to back; position ids restart at 0 per sample
    cu_seq_lens_q/k, max_length_q/k                       sample boundaries (rows read one after the other) for
                                                          flash-attention's varlen kernels
    use_cache                         False
    pixel_values, input_features                          one entry per medium, in the order of the packed samples

and holds no `attention_mask`. How each attention implementation keeps samples apart:

- `sdpa`, `eager` (and `flex_attention`): transformers' `masking_utils.create_causal_mask` finds packed sequences
  from `position_ids` (`find_packed_sequence_indices`: a new sample starts wherever the position does not grow by
  one) and builds a block-diagonal causal mask, but only when no 2-D `attention_mask` and no KV cache is given: hence
  no `attention_mask`, and `use_cache=False` so that a backbone whose config says `use_cache: true` does not create a
  cache (TRL's `compute_loss` passes `use_cache=False` as well; a direct `model(**batch)` call needs it here).
- `flash_attention_2/3`: the varlen kernels read `cu_seq_lens_*`/`max_length_*` (passed through to the language
  model's attention), as with TRL's own padding-free collator.

Rows and the token budget (`max_tokens_per_row`, the recipe's `packing_token_budget`): without a budget the whole
batch is one row (`per_device_train_batch_size` samples back to back). With one, the batch's samples are bin-packed
first-fit decreasing into as few rows as fit the budget (a sample longer than the budget gets a row of its own), and
every row is filled up to the longest row with a filler tail. Why a budget: a kernel that skips masked blocks
(flash-attention varlen) pays only for each sample's own attention, but SDPA and eager compute the block-diagonal
mask's whole square, so one long row of a big batch costs `(batch * length)^2` attention instead of `batch *
length^2`; a row of a few samples keeps that square small while still removing nearly all padding (see
docs/performance.md for the measurements).

Labels: the first token of every sample is `-100`, so no sample is trained to continue the previous one (as TRL
does). Fillers (row tails, `pad_to_multiple_of`) are samples of their own: positions from 0, labels `-100`, so they
change no real sample's attention or loss. Placeholders stay where they are, and media are ordered like the packed
samples, so the model's `masked_scatter` of tower features (row-major) is unchanged.

Limits: the language model must build its mask with `masking_utils` from `position_ids` (the Llama, Qwen2, Gemma,
Phi families in transformers 5.x do); mask-less custom attention implementations are not separated.
"""

from collections.abc import Sequence
from typing import Any

import torch

from ..constants import IGNORE_INDEX

__all__ = ["MEDIA_KEYS", "pack_samples", "plan_rows", "segment_lengths"]

# Media tensors of an encoded sample, concatenated (one entry per medium) in the order of the packed samples.
MEDIA_KEYS = ("pixel_values", "input_features")


def _segments(item: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`(input_ids, labels)` segments of one encoded sample: one, or two when it carries unattended dummy media.

    The collator's ZeRO-3 dummy medium is appended to a sample with `num_attended` marking where it starts. Padded,
    the attention mask hides it; packed, it becomes a sample of its own, so no real token attends to it and its
    (always `-100`) positions reach no loss.
    """
    ids, labels = item["input_ids"], item["labels"]
    attended = int(item.get("num_attended", ids.shape[0]))
    segments = [(ids[:attended], labels[:attended])]
    if attended < ids.shape[0]:
        segments.append((ids[attended:], labels[attended:]))
    return segments


def plan_rows(lengths: Sequence[int], max_tokens_per_row: int | None = None) -> list[list[int]]:
    """Which samples go into which row: first-fit decreasing bin packing of `lengths` into rows of at most
    `max_tokens_per_row` tokens (all in one row when it is None).

    A sample longer than the budget gets a row of its own (it is never split: its placeholders must stay whole).
    Within a row the samples keep their batch order, and rows are ordered by their first sample, so the result only
    depends on the lengths.
    """
    if max_tokens_per_row is None:
        return [list(range(len(lengths)))] if len(lengths) else []
    if max_tokens_per_row < 1:
        raise ValueError(f"max_tokens_per_row must be >= 1, got {max_tokens_per_row}")
    rows: list[list[int]] = []
    room: list[int] = []
    # Longest first (ties by index, for determinism): the big items fix the rows, the small ones fill the gaps.
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fit = next((r for r, free in enumerate(room) if free >= lengths[index]), None)
        if fit is None:
            rows.append([index])
            room.append(max_tokens_per_row - lengths[index])
        else:
            rows[fit].append(index)
            room[fit] -= lengths[index]
    return sorted((sorted(row) for row in rows), key=lambda row: row[0])


def _filler(length: int, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((length,), pad_token_id), torch.full((length,), IGNORE_INDEX)


def pack_samples(
    encoded: Sequence[dict[str, torch.Tensor]],
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
    max_tokens_per_row: int | None = None,
) -> dict[str, Any]:
    """Pack encoded samples (1-D `input_ids`/`labels` and their media, as `TinyLlavaCollator.encode` returns) into
    rows of at most `max_tokens_per_row` tokens (one row when None).

    Args:
        encoded: the samples, in batch order.
        pad_token_id: filler of row tails; a tail is a sample of its own (positions from 0, labels `-100`), so it
            changes no real sample's attention or loss.
        pad_to_multiple_of: round the row length up to a multiple of this.
        max_tokens_per_row: the token budget of a row (see `plan_rows`).

    Returns:
        The packed batch (module docs), with `pixel_values` / `input_features` concatenated in packed order when
        any sample has them.
    """
    rows = plan_rows([item["input_ids"].shape[0] for item in encoded], max_tokens_per_row)
    width = max(sum(encoded[i]["input_ids"].shape[0] for i in row) for row in rows)
    if pad_to_multiple_of and width % pad_to_multiple_of:
        width += pad_to_multiple_of - width % pad_to_multiple_of

    input_ids, labels, position_ids, lengths = [], [], [], []
    for row in rows:
        segments = [segment for i in row for segment in _segments(encoded[i])]
        used = sum(ids.shape[0] for ids, _ in segments)
        if used < width:
            segments.append(_filler(width - used, pad_token_id))
        row_labels = []
        for _, segment_labels in segments:
            segment_labels = segment_labels.clone()
            segment_labels[0] = IGNORE_INDEX  # would be predicted from the previous sample's last token
            row_labels.append(segment_labels)
        input_ids.append(torch.cat([ids for ids, _ in segments]))
        labels.append(torch.cat(row_labels))
        position_ids.append(torch.cat([torch.arange(ids.shape[0]) for ids, _ in segments]))
        lengths += [ids.shape[0] for ids, _ in segments]

    # Boundaries over the rows read one after the other: flash-attention's varlen path flattens the batch the same way.
    cu_seq_lens = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    batch: dict[str, Any] = {
        "input_ids": torch.stack(input_ids).long(),
        "labels": torch.stack(labels).long(),
        "position_ids": torch.stack(position_ids),
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": max(lengths),
        "max_length_k": max(lengths),
        "use_cache": False,
    }
    order = [i for row in rows for i in row]
    for key in MEDIA_KEYS:  # the model scatters media row-major: they follow the packed order
        tensors = [encoded[i][key] for i in order if key in encoded[i]]
        if tensors:
            batch[key] = torch.cat(tensors)
    return batch


def segment_lengths(position_ids: torch.Tensor) -> list[int]:
    """Lengths of the samples of packed rows (read one after the other), from their position ids (a new sample starts
    at position 0)."""
    starts = (position_ids.reshape(-1) == 0).nonzero().flatten().tolist()
    return [end - start for start, end in zip(starts, [*starts[1:], position_ids.numel()])]
