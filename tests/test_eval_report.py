"""Tests for score_file (RESULT.json) and the Markdown report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinyllava_hf.eval import UnknownTaskError, main_metric, render_report, score_file
from tinyllava_hf.eval.cli import make_eval_parser
from tinyllava_hf.eval.tasks import TASKS, list_tasks
from tinyllava_hf.files import write_json_atomic


def main(argv: list[str]) -> int:
    """``tinyllava-hf eval score ARGV`` (what ``python -m tinyllava_hf.eval.score ARGV`` was)."""
    args = make_eval_parser().parse_args(["score", *argv])
    return args.func(args)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def gqa_files(tmp_path: Path) -> tuple[Path, Path]:
    questions = tmp_path / "testdev_balanced_questions.json"
    questions.write_text(json.dumps({"1": {"answer": "yes"}, "2": {"answer": "dog"}, "3": {"answer": "red"}}))
    predictions = write_jsonl(
        tmp_path / "answers.jsonl",
        [
            {"question_id": "1", "text": "Yes.", "model_id": "tiny-llava-test"},  # right
            {"question_id": "2", "text": "cat", "model_id": "tiny-llava-test"},  # wrong
            {"question_id": "9", "text": "x", "model_id": "tiny-llava-test"},  # not in the annotations
        ],
    )
    return predictions, questions


# --------------------------------------------------------------------------------------------------------------------
# score_file
# --------------------------------------------------------------------------------------------------------------------


def test_score_file_writes_result_json(gqa_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    predictions, questions = gqa_files
    result = score_file("gqa", predictions, questions)
    # Default location: next to the predictions, named after them (two scores in one folder never collide).
    output = predictions.parent / "answers.result.json"
    assert json.loads(output.read_text()) == result
    assert result["task"] == "gqa"
    assert result["model"] == "tiny-llava-test"  # from the predictions' model_id
    assert result["metrics"]["accuracy"] == pytest.approx(50.0)  # 1 right of the 2 matched
    assert "num_scored" not in result["metrics"] and "missing" not in result["metrics"]
    assert result["num_predictions"] == 3
    assert result["num_scored"] == 2
    assert result["missing"]["predictions_without_annotation"] == 1
    assert result["missing"]["annotations_without_prediction"] == 1  # question 3
    assert result["predictions"] == str(predictions)
    assert "[gqa] tiny-llava-test: accuracy = 50.00 on 2 questions" in capsys.readouterr().out
    # Atomic write leaves no temporary file behind.
    assert sorted(p.name for p in predictions.parent.iterdir()) == [
        "answers.jsonl",
        "answers.result.json",
        "testdev_balanced_questions.json",
    ]


def test_score_file_explicit_output_and_model(gqa_files: tuple[Path, Path], tmp_path: Path) -> None:
    predictions, questions = gqa_files
    output = tmp_path / "out" / "gqa" / "RESULT.json"
    result = score_file("gqa", predictions, questions, output, model="my-model")
    assert json.loads(output.read_text())["model"] == "my-model"
    assert result["output"] == str(output)


def test_score_file_rejects_unknown_task_and_stray_judge(gqa_files: tuple[Path, Path]) -> None:
    predictions, questions = gqa_files
    with pytest.raises(UnknownTaskError, match="valid tasks"):
        score_file("GQA", predictions, questions)
    with pytest.raises(ValueError, match="judge is only used by"):
        score_file("gqa", predictions, questions, judge=lambda prompt: "1.0")
    assert not (predictions.parent / "answers.result.json").exists()


def test_score_file_mmvet_with_and_without_judge(tmp_path: Path) -> None:
    mmvet = tmp_path / "mm-vet.json"
    mmvet.write_text(json.dumps({"v1_0": {"question": "Q?", "answer": "A", "capability": ["rec"]}}))
    predictions = write_jsonl(tmp_path / "mmvet.jsonl", [{"question_id": 0, "text": "A"}])
    unscored = score_file("mmvet", predictions, mmvet, tmp_path / "a.json")
    assert unscored["metrics"]["status"] == "not scored"
    assert unscored["num_scored"] == 0
    scored = score_file("mmvet", predictions, mmvet, tmp_path / "b.json", judge=lambda prompt: "0.5")
    assert scored["metrics"]["total"] == pytest.approx(50.0)
    assert scored["num_scored"] == 1


def test_score_file_bad_predictions_write_nothing(tmp_path: Path) -> None:
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text('{"question_id": 1, "text": "a"}\n{oops\n')
    annotations = tmp_path / "a.json"
    annotations.write_text(json.dumps({"1": "a"}))
    with pytest.raises(ValueError, match=r"predictions\.jsonl line 2 is not JSON"):
        score_file("easy_vqa", predictions, annotations)
    assert not (tmp_path / "predictions.result.json").exists()


def test_write_json_atomic_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "RESULT.json"
    write_json_atomic(path, {"ok": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})  # not JSON-serialisable, fails mid-write
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["RESULT.json"]


def test_cli_main(gqa_files: tuple[Path, Path], tmp_path: Path) -> None:
    predictions, questions = gqa_files
    output = tmp_path / "cli.json"
    argv = ["--task", "gqa", "--predictions", str(predictions), "--annotations", str(questions)]
    assert main([*argv, "--output", str(output)]) == 0
    assert json.loads(output.read_text())["metrics"]["accuracy"] == pytest.approx(50.0)


# --------------------------------------------------------------------------------------------------------------------
# main_metric and render_report
# --------------------------------------------------------------------------------------------------------------------


def test_main_metrics_cover_every_scorer() -> None:
    main_metrics = {name: spec.main_metrics for name, spec in TASKS.items() if spec.main_metrics}
    assert sorted(main_metrics) == list_tasks()


@pytest.mark.parametrize(
    ("task", "metrics", "expected"),
    [
        ("vqav2", {"accuracy": 78.5, "per_answer_type": {}}, ("accuracy", 78.5)),
        ("pope", {"f1": 85.9, "accuracy": 86.1}, ("f1", 85.9)),
        ("mme", {"perception": 1466.0, "cognition": 250.0}, ("perception", 1466.0)),
        ("scienceqa", {"img_accuracy": 69.0, "accuracy": 70.0}, ("img_accuracy", 69.0)),
        ("mmvet", {"status": "not scored", "reason": "no judge"}, ("total", None)),
    ],
)
def test_main_metric(task: str, metrics: dict, expected: tuple[str, float | None]) -> None:
    assert main_metric(task, metrics) == expected


def test_main_metric_unknown_task() -> None:
    with pytest.raises(UnknownTaskError, match="valid tasks: easy_vqa"):
        main_metric("vqa", {"accuracy": 1.0})


def test_render_report_rows() -> None:
    results = [
        {
            "task": "pope",
            "model": "tiny|llava",
            "metrics": {"f1": 85.91234, "accuracy": 86.0},
            "num_scored": 8910,
            "missing": {"annotations_without_prediction": 0, "predictions_without_annotation": 2},
        },
        {
            "task": "mmvet",
            "model": "tiny-llava",
            "metrics": {"status": "not scored", "reason": "no judge"},
            "num_scored": 0,
            "missing": {"annotations_without_prediction": 218, "predictions_without_annotation": 0},
        },
    ]
    lines = render_report(results).strip().splitlines()
    assert lines[0] == "| Model | Task | Metric | Value | Other metrics | Scored | Unanswered | Unmatched |"
    assert len(lines) == 4  # header, separator, one row per result
    assert lines[2] == "| tiny\\|llava | pope | f1 | 85.91 | accuracy 86.00 | 8910 | 0 | 2 |"
    assert lines[3] == "| tiny-llava | mmvet | total | not scored |  | 0 | 218 | 0 |"


def test_render_report_empty_and_invalid() -> None:
    assert "_No results._" in render_report([])
    with pytest.raises(ValueError, match="result 0 has no 'task'"):
        render_report([{"metrics": {}}])
