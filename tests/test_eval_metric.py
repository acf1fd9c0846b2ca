"""The task registry's scorers as a packaged `evaluate` metric: loads offline, gives `eval score`'s numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tinyllava_hf
from tinyllava_hf.easy_vqa import write_easy_vqa_files
from tinyllava_hf.eval import (
    UnknownTaskError,
    load_annotations,
    load_metric,
    load_predictions,
    metric_path,
    reference_rows,
    score_file,
)
from tinyllava_hf.eval.loaders import EvalDataError
from tinyllava_hf.eval.metrics import METRIC_NAME, annotations_from_rows

pytest.importorskip("evaluate")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # The metric is read from the installed package: no hub, no dataset server.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def metric_scores(task: str, predictions: Path, annotations: Path, cache_dir: Path) -> dict:
    metric = load_metric(task, cache_dir=str(cache_dir))
    references = reference_rows(load_annotations(task, annotations))
    return metric.compute(predictions=load_predictions(predictions), references=references)


def eval_score(task: str, predictions: Path, annotations: Path, output: Path) -> dict:
    """What `tinyllava-hf eval score` writes, as the scorer returns it (metrics plus bookkeeping)."""
    result = score_file(task, predictions, annotations, output)
    return {**result["metrics"], "num_scored": result["num_scored"], "missing": result["missing"]}


def test_metric_script_is_packaged() -> None:
    folder = Path(metric_path())
    assert (folder / f"{METRIC_NAME}.py").is_file()
    assert Path(tinyllava_hf.__file__).parent in folder.parents  # inside the installed package, found without a hub


def test_easy_vqa_metric_equals_eval_score(tmp_path: Path) -> None:
    files = write_easy_vqa_files(tmp_path / "easy", "test", limit=12, seed=0)
    answers = [json.loads(line)["answer"] for line in files.annotations.read_text().splitlines()]
    questions = [json.loads(line) for line in files.questions.read_text().splitlines()]
    # Right, right with other case and a period, then wrong: 8 of 12 right.
    texts = [a if i % 3 == 0 else f"{a.upper()}." if i % 3 == 1 else "purple" for i, a in enumerate(answers)]
    predictions = write_jsonl(
        tmp_path / "PRED.jsonl",
        [{"question_id": q["question_id"], "prompt": q["text"], "text": t} for q, t in zip(questions, texts)],
    )
    expected = eval_score("easy_vqa", predictions, files.annotations, tmp_path / "RESULT.json")
    assert expected["accuracy"] == pytest.approx(100 * 8 / 12)
    assert metric_scores("easy_vqa", predictions, files.annotations, tmp_path / "cache") == expected


def test_vqav2_metric_equals_eval_score(tmp_path: Path) -> None:
    def entry(qid: int, answer_type: str, answers: list[str]) -> dict:
        return {
            "question_id": qid,
            "answer_type": answer_type,
            "question_type": "what",
            "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)],
        }

    entries = [
        entry(1, "yes/no", ["yes"] * 10),
        entry(2, "number", ["2"] * 2 + ["3"] * 8),  # "2" from 2 of 10 humans: soft accuracy 0.6
        entry(3, "other", ["red"] * 5 + ["dark red"] * 5),
        entry(4, "other", ["a dog"] * 10),  # articles are dropped: "dog" matches
    ]
    annotations = tmp_path / "v2_mscoco_val2014_annotations.json"
    annotations.write_text(json.dumps({"annotations": entries}))
    predictions = write_jsonl(
        tmp_path / "PRED.jsonl",
        [
            {"question_id": 1, "text": "Yes"},
            {"question_id": 2, "text": "two"},
            {"question_id": 3, "text": "blue"},
            {"question_id": 4, "text": "dog"},
        ],
    )
    expected = eval_score("vqav2", predictions, annotations, tmp_path / "RESULT.json")
    assert expected["num_scored"] == 4 and 0 < expected["accuracy"] < 100
    assert metric_scores("vqav2", predictions, annotations, tmp_path / "cache") == expected


def test_metric_needs_a_registered_task(tmp_path: Path) -> None:
    with pytest.raises(UnknownTaskError, match="valid tasks: easy_vqa"):
        load_metric("VQAv2", cache_dir=str(tmp_path))
    import evaluate

    with pytest.raises(ValueError, match="name the task"):
        evaluate.load(metric_path(), cache_dir=str(tmp_path))


def test_reference_rows_round_trip() -> None:
    annotations = {"1": {"answer": "circle"}, "q2": {"answers": ["a", "b"], "answer_type": "other"}}
    assert annotations_from_rows(reference_rows(annotations)) == annotations
    with pytest.raises(EvalDataError, match="appears twice"):
        annotations_from_rows(reference_rows(annotations) * 2)
    with pytest.raises(EvalDataError, match="reference 0 is not"):
        annotations_from_rows([{"answer": "circle"}])
