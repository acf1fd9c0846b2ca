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

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..cli import main as cli_main
from ..eval.runner import run_eval
from ..eval.score import score_file
from ..files import packaged_file, write_json_atomic
from ..hub import (
    CardInfo,
    EvaluationEntry,
    default_template_name,
    describe_checkpoint,
    training_stage,
    write_model_card,
)
from ..loading import load_model_and_processor
from .data import SENTENCE_CASE_RULE, write_demo_data
from .parts import DemoPartsSpec, save_parts

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
    """What the command line can change; the defaults are the measured configuration (see README)."""

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


def _train(stage: str, overrides: list[str], recipes: dict[str, str] = RECIPES) -> None:
    code = cli_main(["train", "--config", str(packaged_file(recipes[stage])), *overrides])
    if code:
        raise RuntimeError(f"training with {recipes[stage]} failed (exit code {code})")


def _stage_overrides(max_steps: int | None, max_samples: int | None) -> list[str]:
    overrides = []
    if max_steps is not None:
        overrides += ["--max_steps", str(max_steps)]
    if max_samples is not None:
        overrides += ["--max_samples", str(max_samples)]
    return overrides


def _log_history(stage_dir: Path) -> list[dict]:
    """The trainer's logged losses, from the final `trainer_state.json` of a stage (or its last checkpoint)."""
    candidates = [stage_dir / "trainer_state.json", *sorted(stage_dir.glob("checkpoint-*/trainer_state.json"))]
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text())["log_history"]
    return []


def plot_losses(axis, stages: dict[str, list[dict]]) -> None:
    """Each stage's logged training loss on one matplotlib axis, one curve per stage, steps counted across stages."""
    offset = 0
    for name, history in stages.items():
        points = [(entry["step"] + offset, entry["loss"]) for entry in history if "loss" in entry]
        if points:
            steps, losses = zip(*points, strict=True)
            axis.plot(steps, losses, label=name)
            offset = steps[-1]
    axis.set_xlabel("optimisation step")
    axis.set_ylabel("training loss")
    axis.set_yscale("log")
    if axis.lines:  # a run shorter than the recipes' logging interval logs no loss
        axis.legend()
    axis.set_title("Training loss (pretrain, then finetune)")


def plot_training(stages: dict[str, list[dict]], results: dict, path: Path) -> Path:
    """Training loss of each stage (one curve, steps counted across stages) and the two accuracies, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a CI machine
    import matplotlib.pyplot as plt

    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 1]})
    plot_losses(loss_axis, stages)
    labels = [label for *_, label in EVAL_PASSES.values()]
    values = [results[name] for name in EVAL_PASSES]
    bars = accuracy_axis.bar(labels, values, color=["tab:green", "tab:olive", "tab:gray"])
    accuracy_axis.tick_params(axis="x", labelsize=8)
    accuracy_axis.bar_label(bars, fmt="%.3f")
    accuracy_axis.set_ylim(0, 1)
    accuracy_axis.set_title(f"easy-VQA test ({results['num_questions']} q.)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def run_demo(settings: DemoSettings) -> dict:
    """Run the whole demo; returns the evaluation results (also written to `eval_results.json`)."""
    out = Path(settings.output_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    _say(1, f"building the parts (tokenizer, LM, caption-pretrained vision tower; all from scratch) in {out}")
    tick = time.perf_counter()
    spec = DemoPartsSpec()
    if settings.tower_pretrain_epochs is not None:
        spec = dataclasses.replace(spec, tower_pretrain_epochs=settings.tower_pretrain_epochs)
    parts = save_parts(out / "parts", spec)
    timings["parts"] = time.perf_counter() - tick

    _say(2, "writing the training data (captions for stage 1, questions for stage 2) and the test questions")
    tick = time.perf_counter()
    data = write_demo_data(out / "data", test_limit=settings.test_limit, seed=settings.seed)
    timings["data"] = time.perf_counter() - tick

    _say(3, f"stage 1, pretrain: {RECIPES['pretrain']}")
    tick = time.perf_counter()
    pretrain_dir = out / "pretrain"
    _train(
        "pretrain",
        [
            "--llm", str(parts["llm"]),
            "--vision_tower", str(parts["vision_tower"]),
            "--data_path", str(data.pretrain),
            "--output_dir", str(pretrain_dir),
            *_stage_overrides(settings.pretrain_max_steps, settings.max_train_samples),
        ],
    )  # fmt: skip
    timings["pretrain"] = time.perf_counter() - tick

    _say(4, f"stage 2, finetune: {RECIPES['finetune']}")
    tick = time.perf_counter()
    final_dir = out / "final"
    _train(
        "finetune",
        [
            "--model_name_or_path", str(pretrain_dir),
            "--data_path", str(data.finetune),
            "--output_dir", str(final_dir),
            *_stage_overrides(settings.finetune_max_steps, settings.max_train_samples),
        ],
    )  # fmt: skip
    timings["finetune"] = time.perf_counter() - tick
    # Intermediate checkpoints are for resuming a killed run; the finished model does not need them.
    for checkpoint in final_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)

    _say(
        5,
        f"scoring {data.num_test_questions} easy-VQA test questions: as written, in sentence case, with blank images",
    )
    tick = time.perf_counter()
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
        scores[name] = _fraction(result["metrics"]["accuracy"])
    timings["evaluation"] = time.perf_counter() - tick

    _say(6, "writing eval_results.json, the model card and the plot")
    sample = (
        "the whole test split"
        if settings.test_limit is None
        else f"a seeded sample of {data.num_test_questions} test questions (seed {settings.seed})"
    )
    timings["total"] = time.perf_counter() - start
    results = {
        "task": "easy_vqa",
        "accuracy": scores["accuracy"],
        "sentence_case_accuracy": scores["sentence_case_accuracy"],
        "blind_accuracy": scores["blind_accuracy"],
        "sentence_case_questions": f"the same questions rewritten in sentence case: {SENTENCE_CASE_RULE}",
        "num_questions": data.num_test_questions,
        "questions": sample,
        "scorer": "exact match after lower-casing and stripping (tinyllava_hf.eval scorer 'easy_vqa')",
        "prompt": f"the checkpoint's default chat template ({default_template_name(final_dir)}), image + bare "
        "question, greedy",
        "seconds": {name: round(value, 1) for name, value in timings.items()},
    }
    write_json_atomic(out / "eval_results.json", results)
    histories = {"pretrain": _log_history(pretrain_dir), "finetune": _log_history(final_dir)}
    plot_training(histories, results, out / "training.png")
    stage_dirs = {"pretrain": pretrain_dir, "finetune": final_dir}
    write_model_card(final_dir, _card_info(final_dir, results, stage_dirs, timings))
    summary = (
        f"accuracy {results['accuracy']:.4f}, sentence case {results['sentence_case_accuracy']:.4f}, "
        f"blind {results['blind_accuracy']:.4f}"
    )
    _say(6, f"done in {timings['total'] / 60:.1f} min: {summary}")
    print(
        f"  checkpoint: {final_dir}\n  results:    {out / 'eval_results.json'}\n  plot:       {out / 'training.png'}"
    )
    return results


def _fraction(percent: float) -> float:
    """The scorers report percentages (0-100); eval_results.json holds fractions (0-1)."""
    return round(percent / 100.0, 6)


def _card_info(final_dir: Path, results: dict, stage_dirs: dict[str, Path], timings: dict[str, float]) -> CardInfo:
    """The demo's card: the training rows and the model description come from the recipes that ran and the
    checkpoints they saved; only what no file records (the data set, the limitations) is written here."""
    stages = [
        training_stage(
            name, RECIPES[name], packaged_file(RECIPES[name]), run_dir, STAGE_DATA[name], f"{timings[name]:.0f} s"
        )
        for name, run_dir in stage_dirs.items()
    ]
    parts = describe_checkpoint(final_dir)
    stage_lines = "; ".join(
        f"{stage.name} (`{stage.recipe}`) trains {stage.trainable} in {stage.precision} for {stage.steps} steps"
        for stage in stages
    )
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
