"""The task registry's scorers as a Hugging Face `evaluate` metric, shipped inside the package.

One metric script, `tinyllava_benchmark/tinyllava_benchmark.py`, serves every task: the task is the metric's
`config_name`, and `_compute` calls that task's scorer from :data:`~tinyllava_hf.eval.tasks.TASKS`, so the numbers are
those of `tinyllava-hf eval score`. It loads from the installed package, offline::

    import evaluate
    from tinyllava_hf.eval import load_annotations, load_predictions, metric_path, reference_rows

    gqa = evaluate.load(metric_path(), "gqa")
    scores = gqa.compute(
        predictions=load_predictions("answers/gqa.jsonl"),
        references=reference_rows(load_annotations("gqa", "testdev_balanced_questions.json")),
    )

`predictions` are answer records (`question_id`, `text`, and `prompt` where the answer file has it), `references` one
`{"key", "annotation"}` row per scorable question, as :func:`reference_rows` makes them from a task's annotations:
questions are matched by the task's own rules (POPE splits, MME's per-image questions), not by position. The result
is the scorer's output: the metrics a result file (`eval score`) holds, plus `num_scored` and `missing`.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import Any

from ..loaders import EvalDataError
from ..scorers import Annotations

METRIC_NAME = "tinyllava_benchmark"

__all__ = ["METRIC_NAME", "annotations_from_rows", "load_metric", "metric_path", "reference_rows"]


def metric_path() -> str:
    """The folder of the packaged `evaluate` metric script, for `evaluate.load(metric_path(), task)`."""
    folder = Path(os.fspath(importlib.resources.files(__name__).joinpath(METRIC_NAME)))
    if not (folder / f"{METRIC_NAME}.py").is_file():
        raise FileNotFoundError(f"{folder} holds no {METRIC_NAME}.py: the installed tinyllava_hf is incomplete")
    return str(folder)


def load_metric(task: str, **kwargs: Any) -> Any:
    """`evaluate.load` of the packaged metric for `task` (keyword arguments go to `evaluate.load`)."""
    try:
        import evaluate
    except ImportError:
        raise ImportError("the tinyllava-hf metric needs `evaluate`: pip install 'tinyllava-hf[eval]'") from None
    return evaluate.load(metric_path(), task, **kwargs)


def reference_rows(annotations: Annotations) -> list[dict[str, Any]]:
    """A task's annotations (`{key: record}`, as its loader returns them) as one metric reference row per question."""
    return [{"key": key, "annotation": record} for key, record in annotations.items()]


def annotations_from_rows(rows: list[dict[str, Any]]) -> Annotations:
    """The inverse of :func:`reference_rows`: rows back into the `{key: record}` annotations a scorer takes."""
    annotations: Annotations = {}
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("annotation"), dict) or row.get("key") is None:
            raise EvalDataError(f"reference {index} is not a {{'key', 'annotation'}} row (see reference_rows)")
        key = str(row["key"])
        if key in annotations:
            raise EvalDataError(f"reference {index}: key {key!r} appears twice")
        annotations[key] = row["annotation"]
    return annotations
