"""`--group_by_modality_length`: single-modality batches of similar length, every sample exactly once per epoch,
reproducible from the seed, and wired into the trainer's data loader."""

import random
from collections import Counter

import pytest
import torch
from datasets import Dataset

from tinyllava_hf.train.sampler import (
    LENGTH_COLUMN,
    MODALITY_COLUMN,
    ModalityLengthGroupedSampler,
    add_length_columns,
    modality_length_grouped_indices,
    modality_of,
)


def synthetic(num: dict[str, int], seed: int = 0) -> tuple[list[int], list[str]]:
    """Shuffled samples of several modalities with random lengths (image samples longer, as with placeholders)."""
    rng = random.Random(seed)
    items = [
        (modality, rng.randint(10, 300) + (700 if "image" in modality else 0))
        for modality, count in num.items()
        for _ in range(count)
    ]
    rng.shuffle(items)
    return [length for _, length in items], [modality for modality, _ in items]


def batches_of(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


COUNTS = {"image": 203, "text": 57, "audio": 31, "image+audio": 9}


@pytest.mark.parametrize("batch_size", [1, 4, 7])
@pytest.mark.parametrize("world_size", [1, 2])
def test_batches_are_single_modality_and_every_sample_appears_once(batch_size, world_size):
    lengths, modalities = synthetic(COUNTS)
    sampler = ModalityLengthGroupedSampler(lengths, modalities, batch_size, world_size=world_size, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths))) and len(sampler) == len(lengths)
    # Global batches (one per-device batch per rank) are single-modality except, at the very end, the ones that hold
    # the modalities' remainders: at most (number of modalities - 1) of them.
    global_batches = batches_of(order, batch_size * world_size)
    mixed = [i for i, batch in enumerate(global_batches) if len({modalities[j] for j in batch}) > 1]
    assert len(mixed) <= len(COUNTS) - 1
    assert all(i >= len(global_batches) - len(COUNTS) for i in mixed)
    # Each rank's per-device batch of a global batch therefore shares its modality with the other ranks'.
    full = len(order) - sum(n % (batch_size * world_size) for n in COUNTS.values())
    for batch in batches_of(order[:full], batch_size):
        assert len({modalities[j] for j in batch}) == 1


def test_lengths_are_grouped_within_each_modality():
    lengths, modalities = synthetic(COUNTS, seed=1)
    batch_size = 4
    # A sorting window as large as the data: every batch is a contiguous run of its modality's sorted lengths.
    order = modality_length_grouped_indices(
        lengths, modalities, batch_size, torch.Generator().manual_seed(0), mega_batch_mult=1000
    )
    for batch in batches_of(order, batch_size):
        kinds = {modalities[j] for j in batch}
        if len(kinds) > 1 or len(batch) < batch_size:
            continue  # the remainders at the end
        (kind,) = kinds
        low, high = min(lengths[j] for j in batch), max(lengths[j] for j in batch)
        # No other sample of the modality lies strictly inside the batch's length range.
        assert not [i for i, m in enumerate(modalities) if m == kind and i not in batch and low < lengths[i] < high]

    # With the default window, the spread of lengths inside a batch is far below that of random batches.
    order = list(ModalityLengthGroupedSampler(lengths, modalities, batch_size, seed=0))
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()

    def spread(indices: list[int]) -> float:
        return sum(
            max(lengths[j] for j in b) - min(lengths[j] for j in b) for b in batches_of(indices, batch_size)
        ) / len(batches_of(indices, batch_size))

    assert spread(order) < spread(shuffled) / 5


def test_longest_batch_comes_first():
    lengths, modalities = synthetic(COUNTS, seed=2)
    order = list(ModalityLengthGroupedSampler(lengths, modalities, batch_size=4, seed=5))
    assert max(lengths[j] for j in order[:4]) == max(lengths)


def test_order_is_reproducible_from_seed_and_epoch():
    lengths, modalities = synthetic(COUNTS)
    first = ModalityLengthGroupedSampler(lengths, modalities, batch_size=4, seed=42)
    again = ModalityLengthGroupedSampler(lengths, modalities, batch_size=4, seed=42)
    assert list(first) == list(again) == list(first)  # iterating twice in the same epoch repeats it
    epoch_0 = list(first)
    first.set_epoch(1)
    again.set_epoch(1)
    assert list(first) == list(again) != epoch_0
    assert list(ModalityLengthGroupedSampler(lengths, modalities, batch_size=4, seed=43)) != epoch_0


def test_modality_of_and_bad_arguments():
    assert modality_of({"images": [], "audios": []}) == "text"
    assert modality_of({"images": ["a.png"]}) == "image"
    assert modality_of({"images": ["a.png"], "audios": ["a.wav"]}) == "image+audio"
    with pytest.raises(ValueError, match="2 lengths but 1 modalities"):
        modality_length_grouped_indices([1, 2], ["text"], 2, torch.Generator())
    with pytest.raises(ValueError, match="add_length_columns"):
        ModalityLengthGroupedSampler.from_dataset(Dataset.from_dict({"id": ["a"]}), batch_size=2)


def test_add_length_columns_measures_every_row():
    class Layout:
        def __init__(self, length):
            self.length = length

    dataset = Dataset.from_list(
        [
            {"id": "a", "messages_json": "xx", "images": ["x.png"], "audios": []},
            {"id": "b", "messages_json": "xxxxx", "images": [], "audios": []},
        ]
    )
    measured = add_length_columns(dataset, lambda row: Layout(len(row["messages_json"])))
    assert measured[LENGTH_COLUMN] == [2, 5] and measured[MODALITY_COLUMN] == ["image", "text"]
    sampler = ModalityLengthGroupedSampler.from_dataset(measured, batch_size=1)
    assert sorted(sampler) == [0, 1]


def test_trainer_batches_are_single_modality(parts, tmp_path_factory):
    """Through run_training: the train data loader yields batches that are all-image or all-text."""
    from trl import SFTConfig

    from tinyllava_hf.train.arguments import DataArguments, ModelArguments
    from tinyllava_hf.train.trainer import run_training

    out = tmp_path_factory.mktemp("out")
    config = SFTConfig(
        output_dir=str(out),
        max_steps=1,
        per_device_train_batch_size=4,
        max_length=256,
        bf16=False,
        use_cpu=True,
        activation_checkpointing=False,
        save_strategy="no",
        report_to="none",
        seed=9,
        dataloader_num_workers=0,
    )
    args = ModelArguments(llm=str(parts["llm"]), vision_tower=str(parts["siglip"]), template="llama")
    data = DataArguments(
        data_path=[str(parts["finetune"])], image_folder=str(parts["data"]), group_by_modality_length=True
    )
    trainer = run_training(args, data, config)
    dataset = trainer.train_dataset
    assert isinstance(trainer._get_train_sampler(), ModalityLengthGroupedSampler)
    collator = trainer.data_collator
    assert dataset[LENGTH_COLUMN] == [collator.measure(row).length for row in dataset]
    assert Counter(dataset[MODALITY_COLUMN]) == {"image": 48, "text": 4}

    seen = 0
    for batch in trainer.get_train_dataloader():
        rows = batch["input_ids"].shape[0]
        images = batch["pixel_values"].shape[0] if "pixel_values" in batch else 0
        assert images in (0, rows)  # 48 image and 4 text samples, batch 4: no remainder, so no mixed batch
        seen += rows
    assert seen == len(dataset)
