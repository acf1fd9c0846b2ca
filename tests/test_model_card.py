"""The model card renders from a real checkpoint's config and measured results, and parses back."""

import pytest
from huggingface_hub import ModelCard

from tinyllava_hf import TinyLlavaForConditionalGeneration
from tinyllava_hf.hub import CardInfo, EvaluationEntry, TrainingStage, render_model_card, write_model_card
from tinyllava_hf.testing_utils import tiny_config, tiny_processor


def card_info(**overrides) -> CardInfo:
    info = dict(
        model_name="tinyllava-test",
        repo_id="someone/tinyllava-test",
        summary="A tiny test model.",
        training_summary="Two stages on shapes.",
        training_stages=[
            TrainingStage(
                "pretrain", "recipes/easy_vqa/pretrain/config_demo.yaml", "connector", "captions", 10, 1e-3, 32, "12 s"
            ),
            TrainingStage(
                "finetune", "recipes/easy_vqa/finetune/config_demo.yaml", "all", "questions", 20, 2e-4, 32, "30 s"
            ),
        ],
        evaluation=[
            EvaluationEntry("easy-VQA", "easy-vqa", "test", "accuracy", 0.9312, "bare question", "exact match"),
            EvaluationEntry(
                "easy-VQA (blank image)", "easy-vqa", "test", "blind_accuracy", 0.41, "bare question", "exact match"
            ),
        ],
        evaluation_notes="Scored on the whole test split.",
        limitations="Toy data.",
        datasets=["easy-vqa"],
        base_model=[],
        tags=["easy-vqa"],
    )
    info.update(overrides)
    return CardInfo(**info)


@pytest.fixture
def checkpoint(tmp_path):
    config = tiny_config("qwen2", "siglip", "mlp2x_gelu")
    processor = tiny_processor(config, template="qwen2_base")
    TinyLlavaForConditionalGeneration(config).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    return tmp_path, config


def test_card_renders_and_parses_back(checkpoint):
    folder, config = checkpoint
    path = write_model_card(folder, card_info())
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-text-to-text"
    assert data["license"] == "apache-2.0"
    assert data["datasets"] == ["easy-vqa"]
    assert {"tinyllava", "custom_code"} <= set(data["tags"])
    results = data["model-index"][0]["results"]
    assert sorted(m["value"] for r in results for m in r["metrics"]) == [0.41, 0.9312]
    assert card.data.eval_results[0].metric_type == "accuracy"
    text = card.text
    assert "`qwen2_base`" in text  # the default template is recognised by name
    assert f"{config.num_image_tokens} `<image>` tokens per image" in text
    assert "| easy-VQA | test | accuracy | 0.9312 |" in text
    assert "| pretrain | `recipes/easy_vqa/pretrain/config_demo.yaml` | connector |" in text
    assert "someone/tinyllava-test" in text and "2402.14289" in text
    assert "{{" not in text and "None" not in text


def test_unfilled_values_are_refused(checkpoint):
    folder, _ = checkpoint
    with pytest.raises(ValueError, match="unfilled placeholder"):
        render_model_card(folder, card_info(limitations=None))


def test_missing_template_is_a_clear_error(checkpoint, tmp_path):
    folder, _ = checkpoint
    with pytest.raises(FileNotFoundError, match="Model card template not found"):
        render_model_card(folder, card_info(), template_path=tmp_path / "nope.md")


def test_checkpoint_card_of_a_command_claims_no_evaluation(checkpoint):
    from tinyllava_hf.hub import write_checkpoint_card

    folder, config = checkpoint
    origin = "Converted by `tinyllava-hf convert` from an upstream TinyLLaVA Factory checkpoint."
    card = ModelCard.load(write_checkpoint_card(folder, origin))
    assert card.data.library_name == "transformers" and not card.data.eval_results and not card.data.datasets
    assert origin in card.text and "No evaluation results are recorded" in card.text
    assert f"{config.text_config.num_hidden_layers}-layer qwen2 LM" in card.text
    assert "| stage | recipe |" not in card.text and "| benchmark |" not in card.text
    assert "{{" not in card.text and "None" not in card.text
