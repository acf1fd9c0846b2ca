"""Modality- and length-grouped sampling (`--group_by_modality_length`, as LLaVA's and upstream TinyLLaVA's).

    tinyllava-hf train --config RECIPE.yaml --group_by_modality_length true

Mixing image and text-only samples in a batch wastes compute on padding (an image sample carries hundreds of
placeholders, a text-only one none) and, under ZeRO-3, makes a text-only batch run the tower on a blank image. This
sampler orders an epoch so that every batch holds one modality (`text`, `image`, `audio` or `image+audio`) and
samples of similar token length:

1. each modality's samples are shuffled, cut into mega-batches of `mega_batch_mult` global batches, and each
   mega-batch is sorted by length (longest first), then cut into global batches of `batch_size * world_size`;
2. the global batches of all modalities are shuffled together, and the one holding the longest sample goes first so
   that an out-of-memory error shows at the first step rather than hours in;
3. each modality's remainder (fewer samples than a global batch) comes last, grouped by modality, so every sample is
   seen exactly once per epoch; only the last `number of modalities - 1` global batches can therefore mix modalities
   (upstream merges the remainders the same way).

A global batch is `world_size` consecutive per-device batches, which is how accelerate deals a sampler's stream out
to the ranks, so every rank gets the same modality at every step. The order depends only on `seed` and the epoch
(`set_epoch`, called by the Trainer), so a resumed run sees the same batches.

Lengths are the exact token counts after placeholder expansion (`TinyLlavaCollator.measure`: the chat template is
rendered and tokenised, no media are loaded), computed once by `add_length_columns`.
"""

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from datasets import Dataset
from torch.utils.data import Sampler

__all__ = [
    "LENGTH_COLUMN",
    "MODALITY_COLUMN",
    "ModalityLengthGroupedSampler",
    "add_length_columns",
    "modality_length_grouped_indices",
    "modality_of",
]

logger = logging.getLogger(__name__)

LENGTH_COLUMN = "num_tokens"
MODALITY_COLUMN = "modality"


def modality_of(example: Mapping[str, Any]) -> str:
    """`text`, `image`, `audio` or `image+audio`, from the row's `images`/`audios` lists."""
    kinds = [kind for kind, key in (("image", "images"), ("audio", "audios")) if example.get(key)]
    return "+".join(kinds) or "text"


def add_length_columns(
    dataset: Dataset, measure: Callable[[Mapping[str, Any]], Any], num_proc: int | None = None
) -> Dataset:
    """Add `num_tokens` (from `measure(row).length`, e.g. `TinyLlavaCollator.measure`) and `modality` columns.

    The collator ignores both columns, so the dataset keeps working as training input.
    """

    def columns(row: Mapping[str, Any]) -> dict[str, Any]:
        return {LENGTH_COLUMN: int(measure(row).length), MODALITY_COLUMN: modality_of(row)}

    return dataset.map(columns, num_proc=num_proc, desc="Measuring samples for grouping")


def modality_length_grouped_indices(
    lengths: Sequence[int],
    modalities: Sequence[str],
    batch_size: int,
    generator: torch.Generator,
    mega_batch_mult: int = 50,
) -> list[int]:
    """One epoch's order of `range(len(lengths))`: single-modality, length-grouped batches (see the module docs).

    Args:
        lengths: token length of each sample.
        modalities: modality key of each sample (any hashable label; samples with equal keys are batched together).
        batch_size: the global batch, `per_device_batch_size * world_size`.
        generator: the source of randomness (seed it for a reproducible order).
        mega_batch_mult: global batches per sorting window: larger groups lengths more tightly but makes batch
            lengths more predictable (less random) along the epoch.
    """
    if len(lengths) != len(modalities):
        raise ValueError(f"{len(lengths)} lengths but {len(modalities)} modalities")
    if batch_size < 1 or mega_batch_mult < 1:
        raise ValueError("batch_size and mega_batch_mult must be >= 1")
    by_modality: dict[str, list[int]] = {}
    for index, modality in enumerate(modalities):
        by_modality.setdefault(modality, []).append(index)

    full_batches: list[list[int]] = []
    remainders: list[list[int]] = []
    window = batch_size * mega_batch_mult
    for modality in sorted(by_modality):  # sorted: the generator must be consumed in the same order every run
        indices = by_modality[modality]
        shuffled = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
        ordered = []
        for start in range(0, len(shuffled), window):
            ordered += sorted(shuffled[start : start + window], key=lambda i: lengths[i], reverse=True)
        num_full = len(ordered) // batch_size * batch_size
        full_batches += [ordered[i : i + batch_size] for i in range(0, num_full, batch_size)]
        remainders.append(ordered[num_full:])

    batches = [full_batches[i] for i in torch.randperm(len(full_batches), generator=generator).tolist()]
    if batches:
        longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
        batches[0], batches[longest] = batches[longest], batches[0]
    return [index for batch in batches for index in batch] + [index for rest in remainders for index in rest]


class ModalityLengthGroupedSampler(Sampler[int]):
    """Sampler of `modality_length_grouped_indices`, reshuffled per epoch from `seed + epoch`.

    Args:
        lengths: token length of each sample.
        modalities: modality key of each sample.
        batch_size: per-device batch size (the DataLoader's).
        world_size: number of data-parallel processes.
        seed: base seed; epoch `e` uses `seed + e`.
        mega_batch_mult: global batches per length-sorting window.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        modalities: Sequence[str],
        batch_size: int,
        world_size: int = 1,
        seed: int = 0,
        mega_batch_mult: int = 50,
    ):
        self.lengths = list(lengths)
        self.modalities = list(modalities)
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
        self.mega_batch_mult = mega_batch_mult
        self.epoch = 0

    @classmethod
    def from_dataset(cls, dataset: Dataset, batch_size: int, **kwargs: Any) -> "ModalityLengthGroupedSampler":
        """From a dataset with the `num_tokens` and `modality` columns of `add_length_columns`."""
        missing = {LENGTH_COLUMN, MODALITY_COLUMN} - set(dataset.column_names)
        if missing:
            raise ValueError(f"The dataset lacks the column(s) {sorted(missing)}: run add_length_columns first.")
        return cls(dataset[LENGTH_COLUMN], dataset[MODALITY_COLUMN], batch_size, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer at every epoch start: a new order per epoch, the same one on every rank."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(
            modality_length_grouped_indices(
                self.lengths,
                self.modalities,
                self.batch_size * self.world_size,
                generator,
                mega_batch_mult=self.mega_batch_mult,
            )
        )
