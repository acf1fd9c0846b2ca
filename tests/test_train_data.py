"""Training data: LLaVA / ShareGPT4V / TRL-messages formats, text-only and audio samples, bad media handling."""

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from tinyllava_hf.train.data import BadSampleError, load_audio, load_dataset_files, load_image
from tinyllava_hf.train.tiny_parts import draw_shape, make_shapes_dataset


def write_json(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "coco").mkdir()
    draw_shape("circle", "red").save(tmp_path / "coco" / "a.png")
    draw_shape("square", "blue").save(tmp_path / "coco" / "b.png")
    return tmp_path


def llava(sample_id: str, image: str | None, question: str = "<image>\nWhat shape?", answer: str = "circle") -> dict:
    record = {
        "id": sample_id,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
    }
    if image is not None:
        record["image"] = image
    return record


def test_llava_format_converts_to_messages_with_image_blocks(folder):
    path = write_json(folder / "data.json", [llava("s1", "coco/a.png"), llava("s2", None, "Hello?", "Hi.")])
    dataset, skipped = load_dataset_files([path], image_folder=folder)
    assert not skipped
    assert dataset["id"] == ["s1", "s2"]
    first = json.loads(dataset[0]["messages_json"])
    assert first == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "circle"}]},
    ]
    assert dataset[0]["images"] == [str(folder / "coco" / "a.png")]
    # A text-only sample has no media and keeps its text unstripped, as upstream does.
    assert dataset[1]["images"] == [] and dataset[1]["audios"] == []
    assert json.loads(dataset[1]["messages_json"])[0]["content"] == [{"type": "text", "text": "Hello?"}]


def test_sharegpt4v_style_list_of_images_and_default_folder(folder):
    # ShareGPT4V uses the LLaVA layout; without --image_folder, paths resolve against the data file's folder.
    record = llava("sg", ["coco/a.png", "coco/b.png"], "<image>\n<image>\nCompare them.", "Different.")
    path = write_json(folder / "share.jsonl", [])
    path.write_text(json.dumps(record) + "\n")
    dataset, _ = load_dataset_files([path])
    assert dataset[0]["images"] == [str(folder / "coco" / "a.png"), str(folder / "coco" / "b.png")]
    blocks = json.loads(dataset[0]["messages_json"])[0]["content"]
    assert [block["type"] for block in blocks] == ["image", "image", "text"]


def test_trl_messages_format_string_and_block_contents(folder):
    records = [
        {  # string content with a literal marker
            "messages": [
                {"role": "user", "content": "<image>\nWhat shape?"},
                {"role": "assistant", "content": "circle"},
            ],
            "images": ["coco/a.png"],
        },
        {  # block content, already structured
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Colour?"}, {"type": "image"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "blue"}]},
            ],
            "images": ["coco/b.png"],
        },
        {  # no marker at all: TRL puts the images before the first user text
            "messages": [{"role": "user", "content": "Describe."}, {"role": "assistant", "content": "A square."}],
            "images": ["coco/b.png"],
        },
    ]
    dataset, _ = load_dataset_files([write_json(folder / "trl.json", records)], image_folder=folder)
    assert dataset["id"] == ["0", "1", "2"]  # no ids: the index names the sample
    contents = [json.loads(row)[0]["content"] for row in dataset["messages_json"]]
    assert contents[0] == [{"type": "image"}, {"type": "text", "text": "What shape?"}]
    assert contents[1] == [{"type": "text", "text": "Colour?"}, {"type": "image"}]
    assert contents[2] == [{"type": "image"}, {"type": "text", "text": "Describe."}]
    assert json.loads(dataset[0]["messages_json"])[1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "circle"}],
    }


def test_audio_samples_and_folder(tmp_path):
    paths = make_shapes_dataset(tmp_path, num_samples=2, num_text_only=1, num_audio=2)
    dataset, _ = load_dataset_files([paths["audio"]], image_folder=tmp_path)
    assert dataset[0]["audios"] == [str(tmp_path / "audio" / "tone-0000.wav")]
    assert json.loads(dataset[0]["messages_json"])[0]["content"][0] == {"type": "audio"}
    waveform = load_audio(dataset[0]["audios"][0])
    assert waveform.dtype.name == "float32" and waveform.ndim == 1 and len(waveform) == 8000  # 0.5 s at 16 kHz
    # Resampling: the same clip asked for at 8 kHz has half the samples.
    assert len(load_audio(dataset[0]["audios"][0], sampling_rate=8000)) == 4000


def test_missing_image_error_names_file_and_sample(folder):
    path = write_json(folder / "data.json", [llava("ok", "coco/a.png"), llava("sample-42", "coco/missing.png")])
    with pytest.raises(BadSampleError, match=r"Sample 'sample-42': image file not found: .*coco/missing\.png"):
        load_dataset_files([path], image_folder=folder)


def test_missing_media_skipped_and_counted_in_log(folder, caplog):
    records = [llava("ok", "coco/a.png"), llava("gone-1", "coco/x.png"), llava("gone-2", "coco/y.png")]
    path = write_json(folder / "data.json", records)
    with caplog.at_level(logging.WARNING, logger="tinyllava_hf.train.data"):
        dataset, skipped = load_dataset_files([path], image_folder=folder, skip_bad_samples=True)
    assert dataset["id"] == ["ok"]
    assert skipped == {"missing_or_corrupt_media": 2}
    assert "Skipped 2 bad sample(s) of 3" in caplog.text
    assert "gone-1" in caplog.text and "coco/y.png" in caplog.text


def test_corrupt_image_detected_with_verify_media(folder):
    (folder / "coco" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    path = write_json(folder / "data.json", [llava("bad-7", "coco/broken.png")])
    # Existence is all that is checked by default: the collator decodes (tested in test_train_collator.py).
    dataset, _ = load_dataset_files([path], image_folder=folder)
    assert len(dataset) == 1
    with pytest.raises(BadSampleError, match=r"Sample 'bad-7': cannot read image .*broken\.png"):
        load_dataset_files([path], image_folder=folder, verify_media=True)
    with pytest.raises(BadSampleError, match="bad-7"):
        load_image(folder / "coco" / "broken.png", "bad-7")


def test_marker_and_file_counts_must_agree(folder):
    record = llava("two-markers", "coco/a.png", "<image>\n<image>\nWhich?")
    path = write_json(folder / "data.json", [record])
    with pytest.raises(BadSampleError, match=r"'two-markers': has 2 <image> marker\(s\) but 1 image file\(s\)"):
        load_dataset_files([path], image_folder=folder)


def test_max_samples_and_several_files(folder):
    first = write_json(folder / "a.json", [llava(f"a{i}", "coco/a.png") for i in range(3)])
    second = write_json(folder / "b.json", [llava(f"b{i}", None, "Hi", "Hello") for i in range(3)])
    dataset, _ = load_dataset_files([first, second], image_folder=folder)
    assert dataset["id"] == ["a0", "a1", "a2", "b0", "b1", "b2"]
    dataset, _ = load_dataset_files([first, second], image_folder=folder, max_samples=4)
    assert len(dataset) == 4


def test_image_loader_converts_to_rgb(tmp_path):
    Image.new("L", (5, 4), 128).save(tmp_path / "gray.png")
    assert load_image(tmp_path / "gray.png").mode == "RGB"
