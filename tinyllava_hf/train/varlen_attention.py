"""`varlen_sdpa`: SDPA that attends within each packed sample only, so a padding-free row costs the sum of its
samples' squares, not the square of its length.

    from tinyllava_hf.train.varlen_attention import use_varlen_attention
    use_varlen_attention(model)   # the LM's sdpa -> varlen_sdpa; the towers keep theirs

Why: a padding-free row holds several samples back to back (`tinyllava_hf.train.packing`). With `sdpa` or `eager`,
transformers builds a block-diagonal causal mask from the position ids and computes the whole `row_length^2` score
matrix, most of it masked; the flash-attention varlen kernels that skip the masked blocks need a GPU, and flex
attention has no backward on CPU (torch 2.13). This implementation splits the row at the sample boundaries and runs
plain causal SDPA on each sample (samples of equal length share one call), so no mask is built and no score outside
a sample is computed.

How it plugs in: `varlen_sdpa` is registered in transformers' `AttentionInterface` (the attention function) and
`AttentionMaskInterface` (the mask function), and selected for the language model's config only. Boundaries come
from the batch's `cu_seq_lens_q` (the packing collator's, as for flash-attention varlen) or, without them, from
`position_ids` (a new sample starts wherever the position does not grow by one), both of which transformers hands to
every attention call. Everything that is not a cache-free causal self-attention without a padding mask (generation
with a KV cache, left- or right-padded batches, a single decode token) goes to transformers' own SDPA unchanged, so
a model switched to `varlen_sdpa` still evaluates and generates as before. `attn_implementation` is not saved with
the config, so a checkpoint trained this way loads with the default attention anywhere.

Limits: causal layers without sliding windows, soft-capping or attention biases (Llama, Qwen2, Phi, Gemma-1, the
language models TinyLLaVA uses); such a layer raises instead of silently attending across samples. On a GPU with
flash-attention installed, `flash_attention_2` does the same job in one kernel and is preferred.
"""

from collections import defaultdict
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

__all__ = ["VARLEN_SDPA", "register_varlen_attention", "use_varlen_attention", "varlen_sdpa_attention_forward"]

VARLEN_SDPA = "varlen_sdpa"

# The language-model attention that `use_varlen_attention` replaces: SDPA computes a packed row's whole
# block-diagonal square. flash_attention_*/flex_attention already skip the masked blocks, and eager is kept when asked
# for (it is the one that returns attention weights or supports soft-capping).
REPLACED = ("sdpa",)


def _segments(query: torch.Tensor, kwargs: dict[str, Any]) -> list[int]:
    """Lengths of the samples of the `(batch, heads, length, dim)` rows, read one after the other (a sample never
    crosses a row). From `cu_seq_lens_q` when it covers every token, else from `position_ids`, else one per row."""
    batch, _, length, _ = query.shape
    total = batch * length
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is not None and int(cu_seq_lens[-1]) == total:
        return torch.diff(cu_seq_lens).tolist()
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        return [length] * batch
    position_ids = position_ids.expand(batch, -1) if position_ids.shape[0] != batch else position_ids
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    boundaries = [*starts.reshape(-1).nonzero().flatten().tolist(), total]
    return [end - start for start, end in zip(boundaries, boundaries[1:])]


def varlen_sdpa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal SDPA per sample of packed rows (the module docstring); transformers' SDPA for every other call.

    Returns `(attn_output, None)` with `attn_output` of shape `(batch, length, heads, head_dim)`, as transformers'
    attention functions do.
    """
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    q_length, kv_length = query.shape[2], key.shape[2]
    if attention_mask is not None or not causal or q_length != kv_length or q_length == 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    for unsupported in ("sliding_window", "softcap", "position_bias", "s_aux"):
        if kwargs.get(unsupported) is not None:
            raise ValueError(
                f"{VARLEN_SDPA} does not support attention with {unsupported}: train this model padded, or with "
                "flash_attention_2 (attn_implementation) when packing."
            )

    batch, heads, length, _ = query.shape
    lengths = _segments(query, kwargs)
    # Rows read one after the other: (heads, batch * length, dim). A view when batch is 1 (a packed batch's usual
    # shape), one copy otherwise.
    flat = [t.transpose(0, 1).reshape(t.shape[1], batch * length, t.shape[3]) for t in (query, key, value)]
    starts = torch.tensor([0, *lengths]).cumsum(0).tolist()
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, size in enumerate(lengths):
        by_length[size].append(index)
    gqa = {"enable_gqa": True} if key.shape[1] != heads else {}
    pieces: list[torch.Tensor | None] = [None] * len(lengths)
    for size, indices in by_length.items():
        # Samples of one length run as one batched call; each is a slice of the flat rows (no copy for a single one).
        if len(indices) == 1:
            q, k, v = (t[None, :, starts[indices[0]] : starts[indices[0]] + size] for t in flat)
        else:
            q, k, v = (torch.stack([t[:, starts[i] : starts[i] + size] for i in indices]) for t in flat)
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, **gqa
        )
        for slot, i in enumerate(indices):
            pieces[i] = out[slot]
    # (heads, batch * length, dim) -> (batch, length, heads, dim), the layout the attention modules expect.
    output = torch.cat(pieces, dim=1).reshape(heads, batch, length, -1).permute(1, 2, 0, 3).contiguous()
    return output, None


def varlen_sdpa_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | torch.Tensor = 0,
    kv_offset: int = 0,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor | None:
    """No mask for a cache-free causal pass without padding (the attention function splits the samples itself);
    transformers' SDPA mask otherwise (padded batches, decoding with a cache)."""
    fresh = not isinstance(q_offset, torch.Tensor) and q_offset == 0 and kv_offset == 0
    if attention_mask is None and fresh and q_length == kv_length:
        return None
    return sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        attention_mask=attention_mask,
        **kwargs,
    )


def register_varlen_attention() -> str:
    """Register `varlen_sdpa` with transformers (idempotent) and return its name, for `attn_implementation=`."""
    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_attention_forward)
    AttentionMaskInterface.register(VARLEN_SDPA, varlen_sdpa_mask)
    return VARLEN_SDPA


def use_varlen_attention(model: torch.nn.Module) -> bool:
    """Switch the language model of a TinyLLaVA `model` from `sdpa` to `varlen_sdpa`; the vision and audio towers
    keep their own attention. Returns whether it switched (False for any other attention: flash/flex attention
    already skip the masked blocks, eager is an explicit choice)."""
    text_config = model.config.text_config
    if text_config._attn_implementation not in REPLACED:
        return False
    model.set_attn_implementation({"text_config": register_varlen_attention()})
    return True
