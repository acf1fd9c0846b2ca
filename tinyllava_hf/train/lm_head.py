"""Training's LM head on CPU: score only the positions that have a label.

TRL's `SFTTrainer` patches the model with a fused LM head (`trl.trainer.utils.add_fused_lm_head`): the loss comes
from per-token log-probabilities computed in vocabulary chunks, never from the full `(batch, length, vocab)` logits.
Where Triton runs (CUDA, XPU) it projects only the positions whose next-token label is not `-100`; everywhere else
it projects every position, because on compiled back ends (Neuron) a row count that changes with each batch would
recompile the kernel. On a CPU nothing recompiles, and in a vision-language batch most positions have no label: the
195 image placeholders of a SigLIP-base image, the prompt and the padding. For the benchmark mix (SmolLM2-135M's
49,152-token vocabulary, 8 samples of ~270 tokens, 13% of them supervised) the head's forward and backward took
~6 s of a ~18 s step over every position against ~0.4 s over the supervised ones.

`score_supervised_positions_only(model)` wraps the fused forward TRL installed: with `fused_lm_head=True` it runs
the backbone, gathers the supervised positions, projects them through the LM head in chunks of rows (each chunk's
logits recomputed in the backward pass instead of kept), and returns the same `FusedCausalLMOutput` (loss,
`log_probs`, `entropy`, `is_top1`, `label_mask`) with zeros at the other positions, as TRL's Triton path does. Any
other call (generation, plain logits, pre-shifted `shift_labels`, MoE router losses, scaled logits) goes to TRL's
forward unchanged. The LM head is called as a module, so DeepSpeed ZeRO-3 gathers its partitioned weight as usual.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Rows projected at once: their logits (rows x vocabulary, float32) are the largest tensor of the step; 1,024 rows of
# a 49,152-token vocabulary take 200 MB, three times that in flight for log-softmax and its gradient.
ROWS_PER_CHUNK = 1024

# Text-config attributes that rescale the logits; a model with any of them keeps TRL's head, which applies them.
_LOGIT_SCALES = ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def supports_supervised_only_head(model, device: torch.device) -> bool:
    """Whether `score_supervised_positions_only` should serve `model` trained on `device`: a CPU run (on GPUs TRL's
    Triton head already skips the unlabelled positions) of a model whose logits are not rescaled. The training
    device, not the model's: under DeepSpeed ZeRO-3 the model still sits on the CPU when the trainer is built."""
    text_config = model.config.get_text_config()
    rescaled = any(getattr(text_config, name, None) is not None for name in _LOGIT_SCALES)
    return device.type == "cpu" and not rescaled


def score_supervised_positions_only(model) -> None:
    """Make `model(..., labels=labels, fused_lm_head=True)` project only the labelled positions (see module doc).

    Call it after TRL's `add_fused_lm_head` (the `SFTTrainer` constructor does that), on the same model object.
    """
    trl_forward = model.forward
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head or labels is None or shift_labels is not None or kwargs.get("output_router_logits"):
            return trl_forward(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        from trl.trainer.utils import FusedCausalLMOutput

        kwargs["use_cache"] = False
        hidden_states = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        labels = labels[:, 1:].to(hidden_states.device)
        mask = labels != -100
        log_probs, entropy, is_top1 = _score_rows(
            self.get_output_embeddings(), hidden_states[mask], labels[mask], softcap
        )
        # `masked_scatter` keeps the loss connected to the graph when no position has a label (a differentiable 0).
        log_probs, entropy, is_top1 = (
            x.new_zeros(mask.shape).masked_scatter(mask, x) for x in (log_probs, entropy, is_top1)
        )
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / count, log_probs=log_probs, entropy=entropy, is_top1=is_top1, label_mask=mask
        )

    model.forward = types.MethodType(forward, model)


def _score_rows(lm_head, hidden: torch.Tensor, labels: torch.Tensor, softcap: float | None):
    """(log-probability of each label, entropy, label is the top token) for `hidden` rows, chunk by chunk."""
    parts = []
    for start in range(0, max(len(hidden), 1), ROWS_PER_CHUNK):
        rows, targets = hidden[start : start + ROWS_PER_CHUNK], labels[start : start + ROWS_PER_CHUNK]
        if len(hidden) > ROWS_PER_CHUNK and torch.is_grad_enabled():
            # Several chunks: keep none of their logits; the backward pass recomputes each chunk's.
            parts.append(checkpoint(_score_chunk, lm_head, rows, targets, softcap, use_reentrant=False))
        else:
            parts.append(_score_chunk(lm_head, rows, targets, softcap))
    return tuple(torch.cat(field) for field in zip(*parts))


def _score_chunk(lm_head, rows: torch.Tensor, targets: torch.Tensor, softcap: float | None):
    logits = lm_head(rows).float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    log_softmax = F.log_softmax(logits, dim=-1)
    log_probs = log_softmax.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():  # metrics only, as in TRL
        entropy = -(log_softmax.exp() * log_softmax).sum(-1)
        is_top1 = (logits.argmax(-1) == targets).to(log_probs.dtype)
    return log_probs, entropy, is_top1
