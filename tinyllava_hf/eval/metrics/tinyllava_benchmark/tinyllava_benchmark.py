"""tinyllava-hf benchmark scoring as an `evaluate` metric: `evaluate.load(metric_path(), "<task>")`.

The task (`vqav2`, `gqa`, `textvqa`, `scienceqa`, `pope`, `mme`, `mmmu`, `mmvet`, `easy_vqa`) is the metric's
`config_name`; scoring is the task registry's own scorer (`tinyllava_hf.eval.tasks`), so results equal those of
`tinyllava-hf eval score`. See `tinyllava_hf.eval.metrics` for the input format.
"""

import datasets
import evaluate

from tinyllava_hf.eval.metrics import annotations_from_rows
from tinyllava_hf.eval.tasks import get_task, list_tasks, score_predictions

_DESCRIPTION = "Official (or LLaVA reference) scoring rules of the benchmarks TinyLLaVA reports, from tinyllava-hf."

_KWARGS_DESCRIPTION = """
Args:
    predictions: answer records, dicts with `question_id` and `text` (and `prompt` where the answer file has it),
        e.g. `tinyllava_hf.eval.load_predictions("PRED.jsonl")`.
    references: one `{"key", "annotation"}` row per scorable question,
        `tinyllava_hf.eval.reference_rows(tinyllava_hf.eval.load_annotations(task, path))`.
    judge: `prompt -> reply` LLM judge, for tasks that need one (mmvet); an error for the others.
Returns:
    The task's metrics (percentages; MME as summed scores), `num_scored` and `missing` (unmatched/unanswered counts).
"""


class TinyllavaBenchmark(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        if self.config_name == "default":
            raise ValueError(f"name the task as the config: evaluate.load(path, task), task one of {list_tasks()}")
        spec = get_task(self.config_name)  # an unknown name fails here, listing the tasks
        return evaluate.MetricInfo(
            description=f"{_DESCRIPTION} Task: {spec.title}.",
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            # Records rather than scalars: each task's annotations have their own fields (answer lists, POPE
            # splits, MMMU options), so both sides travel as JSON objects.
            features=datasets.Features({"predictions": datasets.Json(), "references": datasets.Json()}),
        )

    def _compute(self, predictions, references, judge=None):
        return score_predictions(self.config_name, predictions, annotations_from_rows(references), judge=judge)
