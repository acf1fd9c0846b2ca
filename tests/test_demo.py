"""A shortened `tinyllava-hf demo` (a few steps, a small sample): every artefact appears and loads."""

import json

import easy_vqa
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from tinyllava_hf.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--output-dir", str(out), "--quick"]) == 0
    return out


def test_results_file(demo_dir):
    results = json.loads((demo_dir / "eval_results.json").read_text())
    assert results["task"] == "easy_vqa"
    assert 0.0 <= results["accuracy"] <= 1.0 and 0.0 <= results["blind_accuracy"] <= 1.0
    assert 0.0 <= results["sentence_case_accuracy"] <= 1.0
    assert "first letter upper-cased" in results["sentence_case_questions"]
    assert results["num_questions"] == 24
    assert "seeded sample of 24" in results["questions"]
    assert set(results["seconds"]) == {"parts", "data", "pretrain", "finetune", "evaluation", "total"}
    # The scored answer files hold one line per question, for both runs.
    for name in ("image_predictions.jsonl", "blank_predictions.jsonl", "sentence_case_predictions.jsonl"):
        assert len((demo_dir / "eval" / name).read_text().splitlines()) == 24


def test_plot_is_a_png(demo_dir):
    with Image.open(demo_dir / "training.png") as image:
        assert image.format == "PNG" and image.width > 400


def test_model_card_parses_with_measured_scores(demo_dir):
    results = json.loads((demo_dir / "eval_results.json").read_text())
    card = ModelCard.load(demo_dir / "final" / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-text-to-text"
    values = sorted(result.metric_value for result in card.data.eval_results)
    assert values == sorted([results["accuracy"], results["blind_accuracy"], results["sentence_case_accuracy"]])
    assert "recipes/easy_vqa/finetune/config_demo.yaml" in card.text
    assert "{{" not in card.text
    assert '"What color is the shape?"' in card.text  # the quick start asks as people write


def test_checkpoint_answers_through_the_default_template(demo_dir):
    final = demo_dir / "final"
    assert not list(final.glob("checkpoint-*"))
    model = AutoModelForImageTextToText.from_pretrained(final, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(final, trust_remote_code=True)
    processor.tokenizer.padding_side = "left"
    image = Image.open(next(iter(easy_vqa.get_test_image_paths().values()))).convert("RGB")
    conversations = [
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
        for question in ("what color is the shape?", "is there a circle?")
    ]
    inputs = processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"padding": True},
    )  # fmt: skip
    assert processor.decode(inputs["input_ids"][1], skip_special_tokens=False).rstrip().endswith("ASSISTANT:")
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape[0] == 2 and output.shape[1] > inputs["input_ids"].shape[1]
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()
