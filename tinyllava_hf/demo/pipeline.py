"""`tinyllava-hf demo`: build a TinyLLaVA from parts, train it in two stages on easy-VQA, score it, report.

Every step goes through the same entry points a user runs: `tinyllava-hf train --config recipes/easy_vqa/...` for
both stages (the package ships those recipes, see `tinyllava_hf.files.packaged_file`), the evaluation runner and
scorer for the test split, the model-card renderer for the card, which reads what was trained from the recipes and
the saved checkpoints. The output folder ends up with:

    DIR/final/               the checkpoint (AutoModelForImageTextToText + AutoProcessor, trust_remote_code=True),
                             with its model card as README.md
    DIR/eval_results.json    accuracy and blind_accuracy (blank images) on the easy-VQA test questions, and
                             sentence_case_accuracy on the same questions as people write them ("What color ...?")
    DIR/training.png         training loss of both stages and the accuracies
    DIR/parts/, DIR/data/, DIR/pretrain/, DIR/eval/   the intermediate artefacts (parts, data, stage 1, answers)
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..eval.runner import run_eval
from ..eval.score import score_file
from ..hub import CardInfo, EvaluationEntry, TrainingStage, default_template_name, describe_checkpoint
from ..loading import load_model_and_processor
from .data import SENTENCE_CASE_RULE, write_demo_data
from .run import DemoRun, as_fraction, plot_accuracies, remove_checkpoints, stages_sentence, training_figure

# The two stages' recipes, by their path in the repository (`recipes/easy_vqa/...`, where people read and edit them;
# the package ships the same files under the same relative names).
RECIPES = {
    "pretrain": "recipes/easy_vqa/pretrain/config_demo.yaml",
    "finetune": "recipes/easy_vqa/finetune/config_demo.yaml",
}
STAGE_DATA = {"pretrain": "one caption per training image", "finetune": "easy-VQA training questions"}
STEPS = 6
# The scoring passes: result name -> (question file, blank images, answers file name, label in the plot).
# easy-VQA's own questions are lowercase; the sentence-case copy asks them as the README's quick start does.
EVAL_PASSES = {
    "accuracy": ("test_questions", False, "image_predictions.jsonl", "image"),
    "sentence_case_accuracy": (
        "test_questions_sentence_case",
        False,
        "sentence_case_predictions.jsonl",
        "image,\nsentence case",
    ),
    "blind_accuracy": ("test_questions", True, "blank_predictions.jsonl", "blank image"),
}


@dataclass
class DemoSettings:
    """What the command line can change; the defaults are the measured configuration (see README). The other demos'
    settings add theirs to these."""

    output_dir: Path
    test_limit: int | None = None  # None: the whole easy-VQA test split
    seed: int = 0
    eval_batch_size: int = 256
    # Shortened runs (tests): cap the optimisation steps of each stage; None keeps the recipes' own schedule.
    pretrain_max_steps: int | None = None
    finetune_max_steps: int | None = None
    max_train_samples: int | None = None
    tower_pretrain_epochs: int | None = None  # None: the parts' measured default


def _say(step: int, message: str) -> None:
    print(f"[demo {step}/{STEPS}] {message}", flush=True)


def plot_training(stages: dict[str, list[dict]], results: dict, path: Path) -> Path:
    """Training loss of each stage (one curve, steps counted across stages) and the two accuracies, as a PNG."""
    with training_figure(path, stages, [3, 1], figsize=(10, 4)) as (accuracy_axis,):
        labels = [label for *_, label in EVAL_PASSES.values()]
        values = [results[name] for name in EVAL_PASSES]
        title = f"easy-VQA test ({results['num_questions']} q.)"
        plot_accuracies(accuracy_axis, labels, values, ["tab:green", "tab:olive", "tab:gray"], title)
        accuracy_axis.tick_params(axis="x", labelsize=8)
    return path


def run_demo(settings: DemoSettings) -> dict:
    """Run the whole demo; returns the evaluation results (also written to `eval_results.json`)."""
    run = DemoRun(settings, RECIPES, STAGE_DATA)
    out = run.out

    _say(1, f"building the parts (tokenizer, LM, caption-pretrained vision tower; all from scratch) in {out}")
    parts = run.save_parts()

    _say(2, "writing the training data (captions for stage 1, questions for stage 2) and the test questions")
    with run.timed("data"):
        data = write_demo_data(out / "data", test_limit=settings.test_limit, seed=settings.seed)

    _say(3, f"stage 1, pretrain: {RECIPES['pretrain']}")
    pretrain_dir = out / "pretrain"
    run.train(
        "pretrain",
        [
            "--llm", str(parts["llm"]),
            "--vision_tower", str(parts["vision_tower"]),
            "--data_path", str(data.pretrain),
            "--output_dir", str(pretrain_dir),
        ],
    )  # fmt: skip

    _say(4, f"stage 2, finetune: {RECIPES['finetune']}")
    final_dir = out / "final"
    run.train(
        "finetune",
        [
            "--model_name_or_path", str(pretrain_dir),
            "--data_path", str(data.finetune),
            "--output_dir", str(final_dir),
        ],
    )  # fmt: skip
    remove_checkpoints(final_dir)

    _say(
        5,
        f"scoring {data.num_test_questions} easy-VQA test questions: as written, in sentence case, with blank images",
    )
    with run.timed("evaluation"):
        model, processor = load_model_and_processor(final_dir, device="cpu")
        # Answers of an earlier run came from another model: the runner would refuse to resume them, so start afresh.
        shutil.rmtree(out / "eval", ignore_errors=True)
        scores = {}
        for name, (questions, blank, answers_file, _) in EVAL_PASSES.items():
            predictions = out / "eval" / answers_file
            predictions.parent.mkdir(parents=True, exist_ok=True)
            run_eval(
                model,
                processor,
                "easy_vqa",
                getattr(data, questions),
                predictions,
                batch_size=settings.eval_batch_size,
                image_folder=data.test_image_folder,
                blank_image=blank,
            )
            result = score_file("easy_vqa", predictions, data.test_answers, predictions.with_suffix(".result.json"))
            scores[name] = as_fraction(result["metrics"]["accuracy"])

    _say(6, "writing eval_results.json, the model card and the plot")
    results = {
        "task": "easy_vqa",
        "accuracy": scores["accuracy"],
        "sentence_case_accuracy": scores["sentence_case_accuracy"],
        "blind_accuracy": scores["blind_accuracy"],
        "sentence_case_questions": f"the same questions rewritten in sentence case: {SENTENCE_CASE_RULE}",
        "num_questions": data.num_test_questions,
        "questions": run.test_sample(data.num_test_questions),
        "scorer": "exact match after lower-casing and stripping (tinyllava_hf.eval scorer 'easy_vqa')",
        "prompt": f"the checkpoint's default chat template ({default_template_name(final_dir)}), image + bare "
        "question, greedy",
    }
    run.finish(results, {"pretrain": pretrain_dir, "finetune": final_dir}, final_dir, plot_training, _card_info)
    summary = (
        f"accuracy {results['accuracy']:.4f}, sentence case {results['sentence_case_accuracy']:.4f}, "
        f"blind {results['blind_accuracy']:.4f}"
    )
    _say(6, f"done in {run.timings['total'] / 60:.1f} min: {summary}")
    print(
        f"  checkpoint: {final_dir}\n  results:    {out / 'eval_results.json'}\n  plot:       {out / 'training.png'}"
    )
    return results


def _card_info(final_dir: Path, results: dict, stages: list[TrainingStage]) -> CardInfo:
    """The demo's card: the training rows (`stages`) and the model description come from the recipes that ran and
    the checkpoints they saved; only what no file records (the data set, the limitations) is written here."""
    parts = describe_checkpoint(final_dir)
    stage_lines = stages_sentence(stages)
    prompt = f"`{default_template_name(final_dir)}` template, image + bare question"
    evaluation = [
        EvaluationEntry(
            "easy-VQA", "easy-vqa", f"test ({results['questions']})", "accuracy", results["accuracy"], prompt,
            "exact match",
        ),
        EvaluationEntry(
            "easy-VQA, questions in sentence case", "easy-vqa", f"test ({results['questions']})",
            "sentence_case_accuracy", results["sentence_case_accuracy"], prompt, "exact match",
        ),
        EvaluationEntry(
            "easy-VQA, blank images", "easy-vqa", f"test ({results['questions']})", "blind_accuracy",
            results["blind_accuracy"], prompt.replace("image +", "blank image +"), "exact match",
        ),
    ]  # fmt: skip
    return CardInfo(
        model_name="tinyllava-easy-vqa-demo",
        repo_id="tinyllava-easy-vqa-demo",
        summary=(
            f"A tiny TinyLLaVA trained from scratch on CPU in minutes by `tinyllava-hf demo`: {parts}, trained on "
            "the easy-VQA data set (64x64 images of one coloured shape; colour, shape and yes/no questions)."
        ),
        training_summary=(
            "Built from parts by `tinyllava-hf demo`: a byte-level BPE tokenizer trained on the easy-VQA text, a "
            "random LM, and a vision tower trained from scratch for a few epochs to name each training image's "
            "colour and shape (the stand-in for the caption pretraining real towers come with). Then two "
            f"`tinyllava-hf train` recipes (TRL SFTTrainer): {stage_lines}."
        ),
        training_stages=stages,
        evaluation=evaluation,
        evaluation_notes=(
            f"Scored on {results['questions']}. easy-VQA's own questions are lowercase; the sentence-case run asks "
            f"{results['sentence_case_questions']}, as people type them. The blank-image run replaces every image "
            "by a uniform mean-grey image: the gap between it and the others shows that the answers use the image."
        ),
        limitations=(
            "A demonstration model: it knows 8 colours, 3 shapes and yes/no, in easy-VQA's question wordings (in "
            "lower, sentence or upper case, with or without a question mark). It is not a general assistant and "
            "was never trained on natural images."
        ),
        datasets=["easy-vqa"],
        tags=["easy-vqa", "demo"],
        example_image="shape.png",
        example_question="What color is the shape?",
        example_max_new_tokens=4,
    )
