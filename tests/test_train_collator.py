"""`TinyLlavaCollator`: assistant-only labels, placeholders never targets nor cut, media tensors, overlength policy."""

import copy
import json
import logging

import pytest
import torch

from tinyllava_hf.chat_templates import get_chat_template
from tinyllava_hf.constants import IGNORE_INDEX
from tinyllava_hf.train.arguments import ModelArguments
from tinyllava_hf.train.build import build_from_parts
from tinyllava_hf.train.collator import OverlengthError, TinyLlavaCollator, filter_overlength
from tinyllava_hf.train.data import BadSampleError, load_dataset_files


@pytest.fixture(scope="module")
def built(parts):
    args = ModelArguments(
        llm=str(parts["llm"]),
        vision_tower=str(parts["siglip"]),
        audio_tower=str(parts["whisper"]),
        audio_downsample_factor=5,
        template="llama",
    )
    return build_from_parts(args)


@pytest.fixture(scope="module")
def rows(parts):
    dataset, _ = load_dataset_files([parts["finetune"], parts["audio"]], image_folder=parts["data"])
    by_id = {row["id"]: row for row in dataset}
    return {"image": by_id["finetune-0000"], "text": by_id["text-0000"], "audio": by_id["audio-0000"]}


def label_segments(labels: torch.Tensor) -> list[list[int]]:
    """Runs of consecutive non-ignored label positions."""
    segments, current = [], []
    for value in labels.tolist():
        if value == IGNORE_INDEX:
            if current:
                segments.append(current)
            current = []
        else:
            current.append(value)
    return segments + ([current] if current else [])


def test_labels_are_exactly_the_assistant_answers_and_eos(built, rows):
    model, processor = built
    batch = TinyLlavaCollator(processor)([rows["image"], rows["text"]])
    decoded = [[processor.decode(segment) for segment in label_segments(row)] for row in batch["labels"]]
    # The llama template trains " <answer></s>" (the space after "ASSISTANT:" belongs to the answer, as upstream).
    assert decoded == [[" circle</s>", " The shape is red.</s>"], [" Hello! How can I help you today?</s>"]]
    eos = processor.tokenizer.eos_token_id
    for input_ids, labels in zip(batch["input_ids"], batch["labels"]):
        trained = labels != IGNORE_INDEX
        assert torch.equal(labels[trained], input_ids[trained])  # targets are the tokens themselves
        assert (labels == eos).sum() == (input_ids == eos).sum()  # every end of answer is a target


def test_prompts_placeholders_and_padding_are_ignored(built, rows):
    model, processor = built
    batch = TinyLlavaCollator(processor)([rows["text"], rows["image"]])
    config = model.config
    input_ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    placeholders = input_ids == config.image_token_id
    assert placeholders[1].sum() == config.num_image_tokens and not placeholders[0].any()
    assert (labels[placeholders] == IGNORE_INDEX).all()
    # Right padding: the text row is shorter, padded with pad ids, masked and ignored.
    length = int(mask[0].sum())
    assert mask[0, :length].all() and not mask[0, length:].any()
    assert (input_ids[0, length:] == processor.tokenizer.pad_token_id).all()
    assert (labels[0, length:] == IGNORE_INDEX).all()
    # The prompt (system sentence, "USER: ...", "ASSISTANT:") is never a target.
    prompt = processor.apply_chat_template(json.loads(rows["image"]["messages_json"])[:1], add_generation_prompt=True)
    # The template writes the BOS itself, so the rendered text is tokenised without adding special tokens.
    prompt_length = (
        len(processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]) + config.num_image_tokens - 1
    )
    assert (labels[1, :prompt_length] == IGNORE_INDEX).all() and labels[1, prompt_length] != IGNORE_INDEX


def test_pixel_values_only_for_rows_with_images_and_the_model_accepts_them(built, rows):
    model, processor = built
    batch = TinyLlavaCollator(processor)([rows["image"], rows["text"], rows["image"]])
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert "input_features" not in batch
    text_only = TinyLlavaCollator(processor)([rows["text"]])
    assert set(text_only) == {"input_ids", "attention_mask", "labels"}
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_audio_rows_get_input_features_and_ignored_placeholders(built, rows):
    model, processor = built
    batch = TinyLlavaCollator(processor)([rows["audio"], rows["image"]])
    config = model.config
    assert batch["input_features"].shape == (1, 80, 100)  # one 1 s Whisper window
    assert batch["pixel_values"].shape[0] == 1
    audio = batch["input_ids"] == config.audio_token_id
    # The clip's own count (trim_audio_padding, the default), not the whole window's 10 tokens.
    frames = int(batch["feature_attention_mask"][0].sum())
    assert 0 < frames < 100 and config.num_audio_tokens == 10
    assert audio[0].sum() == processor.audio_token_count(frames) < config.num_audio_tokens and not audio[1].any()
    assert (batch["labels"][audio] == IGNORE_INDEX).all()
    assert [processor.decode(s) for s in label_segments(batch["labels"][0])] == [" a high tone</s>"]
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_pretrain_template_trains_the_caption(built, parts):
    model, base = built
    processor = copy.deepcopy(base)
    processor.chat_template = get_chat_template("pretrain")
    dataset, _ = load_dataset_files([parts["pretrain"]], image_folder=parts["data"], max_samples=1)
    batch = TinyLlavaCollator(processor)([dataset[0]])
    assert [processor.decode(s) for s in label_segments(batch["labels"][0])] == ["a red circle\n"]
    # BOS, the placeholders, then the caption: nothing else in the sequence.
    assert batch["input_ids"].shape[1] == 1 + model.config.num_image_tokens + len(
        label_segments(batch["labels"][0])[0]
    )


def test_measure_matches_the_tokenised_length(built, rows):
    _, processor = built
    collator = TinyLlavaCollator(processor)
    for row in rows.values():
        layout = collator.measure(row)
        encoded = collator.encode(row)
        ids = encoded["input_ids"]
        placeholder = torch.isin(ids, torch.tensor(collator.placeholder_ids))
        assert layout.length == ids.shape[0]
        assert layout.media_end == (int(placeholder.nonzero()[-1]) + 1 if placeholder.any() else 0)


def test_overlength_truncates_text_but_never_placeholders(built, rows):
    model, processor = built
    collator = TinyLlavaCollator(processor)
    layout = collator.measure(rows["image"])
    assert layout.media_end < layout.length
    # Room for the placeholders and a bit of text: the tail goes, every placeholder stays.
    cut = TinyLlavaCollator(processor, max_length=layout.media_end + 3)
    batch = cut([rows["image"]])
    assert batch["input_ids"].shape == (1, layout.media_end + 3)
    assert (batch["input_ids"] == model.config.image_token_id).sum() == model.config.num_image_tokens
    assert cut.stats["truncated"] == 1 and batch["pixel_values"].shape[0] == 1


def test_overlength_through_placeholders_drops_or_raises(built, rows, caplog):
    _, processor = built
    collator = TinyLlavaCollator(processor)
    media_end = collator.measure(rows["image"]).media_end
    dropping = TinyLlavaCollator(processor, max_length=media_end - 1, on_overlength="drop")
    with caplog.at_level(logging.WARNING, logger="tinyllava_hf.train.collator"):
        batch = dropping([rows["image"], rows["text"]])
    assert dropping.stats["dropped_overlength"] == 1
    assert "finetune-0000" in caplog.text
    assert batch["input_ids"].shape[0] == 1 and "pixel_values" not in batch  # only the text row is left
    raising = TinyLlavaCollator(processor, max_length=media_end - 1, on_overlength="error")
    with pytest.raises(OverlengthError, match=rf"Sample 'finetune-0000' .* up to position {media_end}"):
        raising([rows["image"]])


def test_filter_overlength_before_training(built, parts):
    _, processor = built
    dataset, _ = load_dataset_files([parts["finetune"]], image_folder=parts["data"])
    collator = TinyLlavaCollator(processor)
    image_end = collator.measure(dataset[0]).media_end
    max_length = image_end - 1
    # Every image sample's placeholders cross max_length; text-only samples stay (the collator cuts their tail).
    kept = filter_overlength(dataset, TinyLlavaCollator(processor, max_length=max_length))
    assert kept["id"] == [row_id for row_id in dataset["id"] if row_id.startswith("text-")]
    with pytest.raises(OverlengthError, match=r"48 of 52 sample\(s\) .* 'finetune-0000'"):
        filter_overlength(dataset, TinyLlavaCollator(processor, max_length=max_length, on_overlength="error"))


def test_corrupt_image_at_collate_time_raises_or_is_skipped(built, rows, tmp_path):
    _, processor = built
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    bad = {**rows["image"], "id": "corrupt-3", "images": [str(broken)]}
    with pytest.raises(BadSampleError, match=r"Sample 'corrupt-3': cannot read image .*broken\.png"):
        TinyLlavaCollator(processor)([bad])
    skipping = TinyLlavaCollator(processor, skip_bad_samples=True)
    batch = skipping([bad, rows["text"]])
    assert batch["input_ids"].shape[0] == 1 and skipping.stats["skipped_bad_media"] == 1
    # A batch with nothing left still trains (on nothing): one all-ignored row.
    empty = skipping([bad])
    assert empty["input_ids"].shape == (1, 1) and (empty["labels"] == IGNORE_INDEX).all()
    assert skipping.stats["empty_batches"] == 1


def test_pad_to_multiple_of(built, rows):
    _, processor = built
    batch = TinyLlavaCollator(processor, pad_to_multiple_of=64)([rows["text"]])
    assert batch["input_ids"].shape[1] % 64 == 0


def test_dummy_media_changes_neither_loss_nor_gradients(built, rows):
    model, processor = built
    plain = TinyLlavaCollator(processor)([rows["text"], rows["text"]])
    dummy_collator = TinyLlavaCollator(processor, dummy_media=True)
    padded = dummy_collator([rows["text"], rows["text"]])
    config = model.config
    # A blank image and a blank audio clip ride on unattended, untrained placeholders after row 0's end.
    assert padded["pixel_values"].shape[0] == 1 and padded["input_features"].shape[0] == 1
    length = plain["input_ids"].shape[1]
    tail = padded["input_ids"][0, length:]
    assert (tail == config.image_token_id).sum() == config.num_image_tokens
    # The blank clip (0.1 s of silence) gets its own token count (trim_audio_padding, the default).
    frames = int(padded["feature_attention_mask"].sum())
    assert (tail == config.audio_token_id).sum() == processor.audio_token_count(frames) < config.num_audio_tokens
    assert not padded["attention_mask"][0, length:].any() and (padded["labels"][0, length:] == IGNORE_INDEX).all()
    assert dummy_collator.stats["dummy_pixel_values"] == 1

    def loss_and_grads(batch):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads

    model.train()
    loss, grads = loss_and_grads(plain)
    dummy_loss, dummy_grads = loss_and_grads(padded)
    model.zero_grad()
    model.eval()
    torch.testing.assert_close(dummy_loss, loss, atol=1e-6, rtol=1e-6)
    # The towers now take part in the step (as ZeRO-3 needs) but receive exactly zero gradient.
    assert any(name.startswith("model.vision_tower.") for name in dummy_grads)
    for name, grad in dummy_grads.items():
        expected = grads.get(name, torch.zeros_like(grad))
        torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-5, msg=name)
    # A batch that already has an image gets no blank one.
    assert TinyLlavaCollator(processor, dummy_media=True)([rows["image"]])["pixel_values"].shape[0] == 1
