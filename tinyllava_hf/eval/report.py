"""Markdown summary of scored result files (the result dicts written by :func:`~tinyllava_hf.eval.score_file`)."""

from __future__ import annotations

from typing import Any

from .tasks import get_task


def _number(value: Any) -> float | None:
    # bool is an int subclass but never a metric value.
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def main_metric(task: str, metrics: dict[str, Any]) -> tuple[str, float | None]:
    """The headline ``(metric name, value)`` of a task's metrics (its :attr:`TaskSpec.main_metrics` first entry);
    value is ``None`` when not scored (e.g. MM-Vet without a judge). Raises
    :class:`~tinyllava_hf.eval.loaders.UnknownTaskError` for an unknown task."""
    name = get_task(task).main_metrics[0]
    return name, _number(metrics.get(name))


def _cell(value: Any) -> str:
    # A "|" inside a cell would split the Markdown row.
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_report(results: list[dict[str, Any]]) -> str:
    """Render a Markdown table with one row per result: model, task, headline and secondary metrics, counts."""
    header = (
        "| Model | Task | Metric | Value | Other metrics | Scored | Unanswered | Unmatched |\n"
        "| --- | --- | --- | ---: | --- | ---: | ---: | ---: |"
    )
    if not results:
        return header + "\n\n_No results._\n"
    rows = []
    for index, result in enumerate(results):
        if "task" not in result or not isinstance(result.get("metrics"), dict):
            raise ValueError(f"result {index} has no 'task' or 'metrics' (is it a result file written by score_file?)")
        task, metrics = result["task"], result["metrics"]
        name, value = main_metric(task, metrics)
        shown = f"{value:.2f}" if value is not None else str(metrics.get("status", "n/a"))
        others = []
        for other in get_task(task).main_metrics[1:]:
            other_value = _number(metrics.get(other))
            if other_value is not None:
                others.append(f"{other} {other_value:.2f}")
        missing = result.get("missing", {})
        cells = [
            result.get("model") or "?",
            task,
            name,
            shown,
            ", ".join(others),
            result.get("num_scored", ""),
            missing.get("annotations_without_prediction", ""),
            missing.get("predictions_without_annotation", ""),
        ]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return header + "\n" + "\n".join(rows) + "\n"
