"""Score one predictions file against a benchmark's annotations and write its result JSON (``eval score``).

A result is named after its predictions (``answers/gqa.jsonl`` -> ``answers/gqa.result.json``) and records which
file it scored (path and SHA-256), so two scores in one folder never collide and an existing result of *another*
predictions file is never replaced without ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from ..files import write_json_atomic
from .fingerprint import line_fingerprint
from .loaders import EvalDataError, PathLike, check_unique_predictions, read_predictions
from .report import main_metric
from .scorers import BOOKKEEPING_KEYS, Judge
from .tasks import get_task, load_annotations, score_predictions

RESULT_SUFFIX = ".result.json"


def default_result_path(predictions_path: PathLike) -> Path:
    """``answers/gqa.jsonl`` -> ``answers/gqa.result.json``: one result per predictions file, beside it."""
    predictions_path = Path(predictions_path)
    return predictions_path.with_name(predictions_path.stem + RESULT_SUFFIX)


def file_sha256(path: PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _model_name(predictions: list[dict[str, Any]], predictions_path: Path) -> str:
    # LLaVA-style answer files carry a model_id per line; otherwise name the run after the file.
    model_ids = {p.get("model_id") for p in predictions}
    if len(model_ids) == 1 and isinstance(next(iter(model_ids)), str):
        return next(iter(model_ids))
    return predictions_path.stem


def _counts(values: list[Any]) -> str:
    return ", ".join(f"{value!r}: {count} lines" for value, count in Counter(values).most_common())


def check_single_run(predictions: list[dict[str, Any]], path: PathLike) -> str | None:
    """Refuse a file that mixes answers of several models (``model_id``) or runs (fingerprint); one score is one
    model. Returns the run's fingerprint id (``None`` for files written without one)."""
    model_ids = [p["model_id"] for p in predictions if p.get("model_id") is not None]
    if len(set(model_ids)) > 1:
        raise EvalDataError(
            f"{path} mixes answers of {len(set(model_ids))} models ({_counts(model_ids)}); score one model per file: "
            "split the lines by model_id"
        )
    fingerprints = [line_fingerprint(p) for p in predictions]
    found = {f for f in fingerprints if f is not None}
    if len(found) > 1 or (found and None in fingerprints):
        raise EvalDataError(
            f"{path} mixes answers of {len(set(fingerprints))} eval runs (metadata.fingerprint "
            f"{_counts(fingerprints)}): another model, template or setting; regenerate into one file per run"
        )
    return found.pop() if found else None


def _check_result_destination(output: Path, predictions_path: Path, overwrite: bool) -> None:
    """Refuse to replace a result of another predictions file (or any other file) unless ``overwrite``."""
    if overwrite or not output.exists():
        return
    try:
        previous = json.loads(output.read_text(encoding="utf-8"))
        scored = previous.get("predictions") if isinstance(previous, dict) else None
    except (OSError, ValueError):
        scored = None
    if scored is not None and Path(scored).resolve() == predictions_path.resolve():
        return  # rescoring the same predictions (e.g. after a resumed run added answers) updates its result
    what = f"a result of {scored}" if scored is not None else "a file that is not a result of these predictions"
    raise EvalDataError(f"{output} already holds {what}; choose another --output or pass --overwrite to replace it")


def score_file(
    task: str,
    predictions_path: PathLike,
    annotations_path: PathLike,
    output_path: PathLike | None = None,
    judge: Judge | None = None,
    *,
    questions_path: PathLike | None = None,
    model: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Load predictions and annotations, score them, print a summary line and write the result JSON.

    Args:
        task: exact task name (see :func:`~tinyllava_hf.eval.tasks.list_tasks`).
        predictions_path: JSON-lines predictions with ``question_id`` and ``text``, one per question and all of one
            model (several ``model_id`` values or run fingerprints, or a question answered twice, is an error).
        annotations_path: the benchmark's annotation file or folder (see :mod:`~tinyllava_hf.eval.loaders`).
        output_path: where to write the result; defaults to ``<predictions stem>.result.json`` next to the
            predictions.
        judge: LLM judge ``prompt -> reply``; only tasks that need one (MM-Vet) take it, for another it is an error.
        questions_path: LLaVA question file; only POPE uses it, to map LLaVA ids to POPE splits.
        model: model name for the report; defaults to the predictions' ``model_id`` or the file name.
        overwrite: replace ``output_path`` even when it holds the result of another predictions file.

    Returns:
        The result dict: ``task``, ``model``, ``metrics``, ``num_predictions``, ``num_scored``, ``missing``,
        ``predictions`` (path), ``predictions_sha256``, ``fingerprint`` (the answers' run fingerprint or ``None``),
        ``annotations`` and ``output``.
    """
    spec = get_task(task)  # an unknown task fails before any file is read
    predictions_path = Path(predictions_path)
    output = Path(output_path) if output_path is not None else default_result_path(predictions_path)
    if output.resolve() == predictions_path.resolve():
        raise EvalDataError(f"--output {output} is the predictions file itself; choose another result file")
    _check_result_destination(output, predictions_path, overwrite)

    rows = read_predictions(predictions_path)
    check_unique_predictions(rows, predictions_path)
    predictions = [record for _, record in rows]
    fingerprint = check_single_run(predictions, predictions_path)
    annotations = load_annotations(spec, annotations_path, questions_path=questions_path)
    scored = score_predictions(spec, predictions, annotations, judge=judge)
    duplicates = scored["missing"].get("duplicate_predictions", 0)
    if duplicates:
        # Different prompts that the task's scorer still matches to one question (e.g. one GQA id asked twice):
        # the scorer would keep the first silently.
        raise EvalDataError(
            f"{predictions_path}: {duplicates} predictions answer a question that already has an answer (same "
            f"question, different prompt text); keep one answer per question"
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
        "predictions_sha256": file_sha256(predictions_path),
        "fingerprint": fingerprint,
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
