"""Benchmark scoring for TinyLLaVA predictions: loaders, official-rule scorers, RESULT.json writer, Markdown report.

Pure Python, no model needed. Typical use::

    from tinyllava_hf.eval import score_file, render_report

    result = score_file("gqa", "answers/gqa.jsonl", "gqa/testdev_balanced_questions.json")
    print(render_report([result]))
"""

from typing import Any

from .loaders import EvalDataError, UnknownTaskError, load_annotations, load_predictions, load_questions
from .report import main_metric, render_report
from .scorers import SCORERS, get_scorer, list_scorers

__all__ = [
    "SCORERS",
    "EvalDataError",
    "UnknownTaskError",
    "get_scorer",
    "list_scorers",
    "load_annotations",
    "load_predictions",
    "load_questions",
    "main_metric",
    "render_report",
    "score_file",
]


def __getattr__(name: str) -> Any:
    # score_file is imported lazily so that ``python -m tinyllava_hf.eval.score`` does not find its own module
    # already imported by the package (runpy warns about that).
    if name == "score_file":
        from .score import score_file

        return score_file
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
