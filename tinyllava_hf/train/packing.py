"""Padding-free packing: every sample of a batch concatenated into one row, each with its own position ids.

    tinyllava-hf train --config RECIPE.yaml --padding_free true

TRL refuses its own `padding_free`/`packing` for vision datasets, so the trainer takes `padding_free: true` away from
TRL and turns on `TinyLlavaCollator(packing=True)` instead, which calls `pack_samples` here. The packed batch is

    input_ids, labels, position_ids   (1, total_length)    samples back to back; position ids restart at 0 per sample
    cu_seq_lens_q/k, max_length_q/k                       sample boundaries for flash-attention's varlen kernels
    use_cache                         False
    pixel_values, input_features                          unchanged: one entry per medium, in order

and holds no `attention_mask`. How each attention implementation keeps samples apart:

- `sdpa`, `eager` (and `flex_attention`): transformers' `masking_utils.create_causal_mask` finds packed sequences
  from `position_ids` (`find_packed_sequence_indices`: a new sample starts wherever the position does not grow by
  one) and builds a block-diagonal causal mask, but only when no 2-D `attention_mask` and no KV cache is given: hence
  no `attention_mask`, and `use_cache=False` so that a backbone whose config says `use_cache: true` does not create a
  cache (TRL's `compute_loss` passes `use_cache=False` as well; a direct `model(**batch)` call needs it here).
- `flash_attention_2/3`: the varlen kernels read `cu_seq_lens_*`/`max_length_*` (passed through to the language
  model's attention), as with TRL's own padding-free collator.

Labels: the first token of every sample is `-100`, so no sample is trained to continue the previous one (as TRL
does). Placeholders stay where they are, so the model's `masked_scatter` of tower features is unchanged.

Limits: a row holds exactly the batch's samples (`per_device_train_batch_size` of them): there is no bin packing to a
token budget, so row lengths vary (`--group_by_modality_length` keeps the samples of a batch of similar length). The
language model must build its mask with `masking_utils` from `position_ids` (the Llama, Qwen2, Gemma, Phi families
in transformers 5.x do); mask-less custom attention implementations are not separated.
"""

from collections.abc import Sequence
from typing import Any

import torch

from ..constants import IGNORE_INDEX

__all__ = ["pack_samples", "segment_lengths"]


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


def pack_samples(
    encoded: Sequence[dict[str, torch.Tensor]], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, Any]:
    """Concatenate encoded samples (1-D `input_ids`/`labels`, as `TinyLlavaCollator.encode` returns) into one row.

    Media tensors are not handled here: the collator concatenates them in sample order, as for padded batches.

    Args:
        encoded: the samples, in batch order.
        pad_token_id: filler of the tail added by `pad_to_multiple_of`; the tail is a sample of its own (positions
            from 0, labels `-100`), so it changes no real sample's attention or loss.
        pad_to_multiple_of: round the row length up to a multiple of this.
    """
    segments = [segment for item in encoded for segment in _segments(item)]
    length = sum(ids.shape[0] for ids, _ in segments)
    if pad_to_multiple_of and length % pad_to_multiple_of:
        pad = pad_to_multiple_of - length % pad_to_multiple_of
        segments.append((torch.full((pad,), pad_token_id), torch.full((pad,), IGNORE_INDEX)))

    lengths = [ids.shape[0] for ids, _ in segments]
    labels = []
    for _, segment_labels in segments:
        segment_labels = segment_labels.clone()
        segment_labels[0] = IGNORE_INDEX  # would be predicted from the previous sample's last token
        labels.append(segment_labels)
    cu_seq_lens = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return {
        "input_ids": torch.cat([ids for ids, _ in segments]).unsqueeze(0).long(),
        "labels": torch.cat(labels).unsqueeze(0).long(),
        "position_ids": torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0),
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": max(lengths),
        "max_length_k": max(lengths),
        "use_cache": False,
    }


def segment_lengths(position_ids: torch.Tensor) -> list[int]:
    """Lengths of the samples of a packed row, read back from its position ids (a new sample starts at position 0)."""
    starts = (position_ids.reshape(-1) == 0).nonzero().flatten().tolist()
    return [end - start for start, end in zip(starts, [*starts[1:], position_ids.numel()])]
