"""Score one predictions file against a benchmark's annotations and write RESULT.json (``tinyllava-hf eval score``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..files import write_json_atomic
from .loaders import PathLike, load_predictions
from .report import main_metric
from .scorers import BOOKKEEPING_KEYS, Judge
from .tasks import get_task, load_annotations, score_predictions


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
        task: exact task name (see :func:`~tinyllava_hf.eval.tasks.list_tasks`).
        predictions_path: JSON-lines predictions with ``question_id`` and ``text``.
        annotations_path: the benchmark's annotation file or folder (see :mod:`~tinyllava_hf.eval.loaders`).
        output_path: where to write the result; defaults to ``RESULT.json`` next to the predictions.
        judge: LLM judge ``prompt -> reply``; only tasks that need one (MM-Vet) take it, for another it is an error.
        questions_path: LLaVA question file; only POPE uses it, to map LLaVA ids to POPE splits.
        model: model name for the report; defaults to the predictions' ``model_id`` or the file name.

    Returns:
        The result dict: ``task``, ``model``, ``metrics``, ``num_predictions``, ``num_scored``, ``missing``,
        ``predictions``, ``annotations`` and ``output``.
    """
    spec = get_task(task)  # an unknown task fails before any file is read
    predictions_path = Path(predictions_path)
    output = Path(output_path) if output_path is not None else predictions_path.parent / "RESULT.json"

    predictions = load_predictions(predictions_path)
    annotations = load_annotations(spec, annotations_path, questions_path=questions_path)
    scored = score_predictions(spec, predictions, annotations, judge=judge)
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
