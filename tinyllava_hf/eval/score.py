"""Score one predictions file against a benchmark's annotations and write RESULT.json.

Usage: ``python -m tinyllava_hf.eval.score --task gqa --predictions answers.jsonl --annotations questions.json``
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .loaders import PathLike, load_annotations, load_predictions
from .report import main_metric
from .scorers import BOOKKEEPING_KEYS, JUDGED_TASKS, Judge, get_scorer


def write_json_atomic(path: PathLike, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically: a temporary file in the same folder, then ``os.replace``.

    A reader never sees a half-written file, and an interrupted run leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _model_name(predictions: list[dict[str, Any]], predictions_path: Path) -> str:
    # LLaVA-style answer files carry a model_id per line; otherwise name the run after the file.
    model_ids = {p.get("model_id") for p in predictions}
    if len(model_ids) == 1 and isinstance(next(iter(model_ids)), str):
        return next(iter(model_ids))
    return predictions_path.stem


def score_file(
    task: str,
    predictions_path: PathLike,
    annotations_path: PathLike,
    output_path: PathLike | None = None,
    judge: Judge | None = None,
    *,
    questions_path: PathLike | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Load predictions and annotations, score them, print a summary line and write the result JSON.

    Args:
        task: exact scorer name (see :func:`~tinyllava_hf.eval.scorers.list_scorers`).
        predictions_path: JSON-lines predictions with ``question_id`` and ``text``.
        annotations_path: the benchmark's annotation file or folder (see :mod:`~tinyllava_hf.eval.loaders`).
        output_path: where to write the result; defaults to ``RESULT.json`` next to the predictions.
        judge: LLM judge ``prompt -> reply``; only MM-Vet uses one (giving it for another task is an error).
        questions_path: LLaVA question file; only POPE uses it, to map LLaVA ids to POPE splits.
        model: model name for the report; defaults to the predictions' ``model_id`` or the file name.

    Returns:
        The result dict: ``task``, ``model``, ``metrics``, ``num_predictions``, ``num_scored``, ``missing``,
        ``predictions``, ``annotations`` and ``output``.
    """
    scorer = get_scorer(task)  # unknown task fails before any file is read
    if judge is not None and task not in JUDGED_TASKS:
        raise ValueError(f"a judge is only used by {sorted(JUDGED_TASKS)}, not {task!r}")
    predictions_path = Path(predictions_path)
    output = Path(output_path) if output_path is not None else predictions_path.parent / "RESULT.json"

    predictions = load_predictions(predictions_path)
    annotations = load_annotations(task, annotations_path, questions_path=questions_path)
    scored = (
        scorer(predictions, annotations, judge=judge) if task in JUDGED_TASKS else scorer(predictions, annotations)
    )
    metrics = {k: v for k, v in scored.items() if k not in BOOKKEEPING_KEYS}

    result = {
        "task": task,
        "model": model or _model_name(predictions, predictions_path),
        "metrics": metrics,
        "num_predictions": len(predictions),
        "num_scored": scored["num_scored"],
        "missing": scored["missing"],
        "predictions": str(predictions_path),
        "annotations": str(annotations_path),
        "output": str(output),
    }
    write_json_atomic(output, result)

    name, value = main_metric(task, metrics)
    shown = f"{value:.2f}" if value is not None else metrics.get("status", "n/a")
    missing = result["missing"]
    print(
        f"[{task}] {result['model']}: {name} = {shown} on {result['num_scored']} questions "
        f"({missing['annotations_without_prediction']} unanswered, {missing['predictions_without_annotation']} "
        f"unmatched predictions) -> {output}"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (no judge: MM-Vet is reported as not scored)."""
    parser = argparse.ArgumentParser(description="Score benchmark predictions and write RESULT.json.")
    parser.add_argument("--task", required=True, help="scorer name, e.g. vqav2, gqa, pope, mme")
    parser.add_argument("--predictions", required=True, help="predictions JSONL (question_id, text)")
    parser.add_argument("--annotations", required=True, help="annotation file or folder")
    parser.add_argument("--output", default=None, help="result path (default: RESULT.json next to predictions)")
    parser.add_argument("--questions", default=None, help="LLaVA question file (POPE only)")
    parser.add_argument("--model", default=None, help="model name for the report")
    args = parser.parse_args(argv)
    score_file(
        args.task,
        args.predictions,
        args.annotations,
        args.output,
        questions_path=args.questions,
        model=args.model,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
