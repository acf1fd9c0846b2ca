"""Benchmark evaluation for TinyLLaVA: the task registry, loaders, official-rule scorers, result writer, report.

Scoring is pure Python, no model needed. Typical use::

    from tinyllava_hf.eval import score_file, render_report

    result = score_file("gqa", "answers/gqa.jsonl", "gqa/testdev_balanced_questions.json")
    print(render_report([result]))

Generation (:func:`tinyllava_hf.eval.runner.run_eval`) needs torch and is imported from its module. The scorers are
also an `evaluate` metric: ``evaluate.load(metric_path(), "gqa")`` (see :mod:`tinyllava_hf.eval.metrics`).
"""

from .loaders import EvalDataError, UnknownTaskError, load_predictions, load_questions
from .metrics import load_metric, metric_path, reference_rows
from .report import main_metric, render_report
from .score import score_file
from .tasks import TASKS, TaskSpec, get_task, list_tasks, load_annotations, load_task_questions, score_predictions

__all__ = [
    "TASKS",
    "EvalDataError",
    "TaskSpec",
    "UnknownTaskError",
    "get_task",
    "list_tasks",
    "load_annotations",
    "load_metric",
    "load_predictions",
    "load_questions",
    "load_task_questions",
    "main_metric",
    "metric_path",
    "reference_rows",
    "render_report",
    "score_file",
    "score_predictions",
]
