"""Benchmark task registry: how to read each benchmark's question file, how to prompt, and how to score it.

Every task is registered under one exact name (``vqav2``, ``gqa``, ``textvqa``, ``scienceqa``, ``pope``, ``mme``,
``mmmu``, ``mmvet``, ``easy_vqa``) and pairs:

* a question-file format (LLaVA's evaluation files: ``question_id`` / ``image`` / ``text`` JSON lines; ScienceQA's
  LLaVA conversation JSON; TinyLLaVA's MMMU ``anns_for_eval.json``);
* the response-format prompt suffix that upstream LLaVA-1.5 / TinyLLaVA evaluated with;
* the generation budget (``max_new_tokens``) of the upstream inference script;
* the annotation loader (:mod:`~tinyllava_hf.eval.loaders`) and scorer (:mod:`~tinyllava_hf.eval.scorers`) that
  turn predictions into the official metric, the headline metrics the report shows, and whether scoring needs an LLM
  judge.

This registry is the one place a task is defined: ``eval run``/``eval score``/``eval report``, :func:`load_annotations`
and the packaged ``evaluate`` metric all look tasks up here.

Where the suffixes come from (all verified against the upstream sources):

* LLaVA-1.5 (Liu et al. 2023, "Improved Baselines with Visual Instruction Tuning") trains and evaluates with
  response-format prompts; LLaVA's ``docs/Evaluation.md`` lists them: short answers ("Answer the question using a
  single word or phrase.", e.g. VQAv2, MME; also GQA, TextVQA, POPE), option letters ("Answer with the option's letter
  from the given choices directly.", multiple choice: ScienceQA), and nothing for natural QA (MM-Vet).
* TinyLLaVA_Factory's ``tinyllava/eval/model_vqa_loader.py`` / ``model_vqa_pope.py`` / ``model_vqa.py`` feed the
  question file's ``text`` verbatim (LLaVA's question files already end with the short-answer suffix), ``"<image>\\n"``
  first, greedy, ``max_new_tokens`` 128 (loader, POPE) or 1024 (``model_vqa.py``, used for MM-Vet).
* TinyLLaVA_Factory's ``model_vqa_science.py`` (``scripts/eval/sqa.sh`` passes ``--single-pred-prompt``) strips
  ``<image>`` from the first human turn and appends ``"\\n" + "Answer with the option's letter from the given choices
  directly."``, 1024 new tokens; question ids come from the ``id`` field.
* TinyLLaVA_Factory's ``model_vqa_mmmu.py`` feeds ``anns_for_eval.json``'s ready-made ``prompt`` (MMMU's LLaVA-1.5
  prompt config: multiple-choice questions end with the option-letter suffix, open questions with the short-answer
  one; lmms-eval 0.7.3 ``tasks/mmmu/utils.py`` uses the same two), 1024 new tokens, ids from ``id``.

A suffix is appended (after a newline, as upstream does) only when the question text does not already end with it,
so LLaVA's files, which carry it, are used unchanged, and plain files get the upstream prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..constants import IMAGE_TOKEN
from . import loaders, scorers
from .loaders import EvalDataError, PathLike, UnknownTaskError, read_records
from .scorers import Annotations, Judge, Prediction, Scorer

SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."

QuestionFormat = Literal["llava_jsonl", "scienceqa_llava", "mmmu_anns"]


@dataclass(frozen=True)
class EvalQuestion:
    """One question ready for generation.

    Attributes:
        question_id: the id as it appears in the question file (int or str), written back unchanged.
        text: the full user text given to the model, prompt suffix included (LLaVA's ``prompt`` field).
        image: the image path as written in the question file (relative to the image folder), or ``None`` for a
            text-only question.
        where: ``"<file> line N"`` / ``"<file>: entry N"``, for error messages.
    """

    question_id: Any
    text: str
    image: str | None
    where: str


@dataclass(frozen=True)
class TaskSpec:
    """How one benchmark is run and scored.

    Attributes:
        name: exact registry name (``--task``).
        title: human-readable benchmark name.
        question_format: how :func:`load_task_questions` reads the question file.
        prompt_suffix: response-format prompt appended when missing (``None``: no suffix).
        prompt_suffix_by_type: per ``question_type`` suffixes (MMMU), used instead of ``prompt_suffix``.
        max_new_tokens: upstream generation budget.
        annotation_loader: reads the benchmark's annotation file or folder into ``{key: record}``
            (a function of :mod:`~tinyllava_hf.eval.loaders`).
        scorer: turns predictions and those annotations into metrics (a function of
            :mod:`~tinyllava_hf.eval.scorers`).
        main_metrics: the headline metric first, then the secondary ones the report shows beside it.
        needs_judge: whether the scorer takes an LLM ``judge`` (MM-Vet); without one it reports "not scored".
        question_file: the usual question file name (documentation and CLI hints).
        image_folder: the usual image folder name (documentation and CLI hints).
        annotations: what to pass to ``eval score --annotations``.
        needs_questions_to_score: whether ``eval score`` also needs ``--questions`` (POPE maps LLaVA ids to splits).
        upstream: where the prompt and budget were taken from.
    """

    name: str
    title: str
    question_format: QuestionFormat
    prompt_suffix: str | None
    max_new_tokens: int
    annotation_loader: Callable[..., Annotations]
    scorer: Scorer
    main_metrics: tuple[str, ...]
    question_file: str
    image_folder: str
    annotations: str
    upstream: str
    prompt_suffix_by_type: Mapping[str, str] = field(default_factory=dict)
    needs_questions_to_score: bool = False
    needs_judge: bool = False


# Headline metrics follow how papers (LLaVA-1.5, TinyLLaVA) report each benchmark: POPE as F1 averaged over its
# splits, MME as the perception total, ScienceQA on image questions.
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="vqav2",
            title="VQAv2 (test-dev)",
            question_format="llava_jsonl",
            prompt_suffix=SHORT_ANSWER,
            max_new_tokens=128,
            annotation_loader=loaders.load_vqav2_annotations,
            scorer=scorers.score_vqav2,
            main_metrics=("accuracy",),
            question_file="llava_vqav2_mscoco_test-dev2015.jsonl",
            image_folder="test2015",
            annotations="v2_mscoco_val2014_annotations.json (val only; test-dev is scored by the EvalAI server)",
            upstream="TinyLLaVA_Factory scripts/eval/vqav2.sh -> tinyllava/eval/model_vqa_loader.py",
        ),
        TaskSpec(
            name="gqa",
            title="GQA (testdev-balanced)",
            question_format="llava_jsonl",
            prompt_suffix=SHORT_ANSWER,
            max_new_tokens=128,
            annotation_loader=loaders.load_gqa_annotations,
            scorer=scorers.score_gqa,
            main_metrics=("accuracy",),
            question_file="llava_gqa_testdev_balanced.jsonl",
            image_folder="images",
            annotations="testdev_balanced_questions.json",
            upstream="TinyLLaVA_Factory scripts/eval/gqa.sh -> tinyllava/eval/model_vqa_loader.py",
        ),
        TaskSpec(
            name="textvqa",
            title="TextVQA (val)",
            question_format="llava_jsonl",
            prompt_suffix=SHORT_ANSWER,
            max_new_tokens=128,
            annotation_loader=loaders.load_textvqa_annotations,
            scorer=scorers.score_textvqa,
            main_metrics=("accuracy",),
            question_file="llava_textvqa_val_v051_ocr.jsonl",
            image_folder="train_images",
            annotations="TextVQA_0.5.1_val.json",
            upstream="TinyLLaVA_Factory scripts/eval/textvqa.sh -> tinyllava/eval/model_vqa_loader.py",
        ),
        TaskSpec(
            name="scienceqa",
            title="ScienceQA (test, IMG subset reported)",
            question_format="scienceqa_llava",
            prompt_suffix=OPTION_LETTER,
            max_new_tokens=1024,
            annotation_loader=loaders.load_scienceqa_annotations,
            scorer=scorers.score_scienceqa,
            main_metrics=("img_accuracy", "accuracy"),
            question_file="llava_test_CQM-A.json",
            image_folder="images/test",
            annotations="the folder holding problems.json and pid_splits.json",
            upstream=(
                "TinyLLaVA_Factory scripts/eval/sqa.sh -> tinyllava/eval/model_vqa_science.py --single-pred-prompt"
            ),
        ),
        TaskSpec(
            name="pope",
            title="POPE (COCO adversarial / popular / random)",
            question_format="llava_jsonl",
            prompt_suffix=SHORT_ANSWER,
            max_new_tokens=128,
            annotation_loader=loaders.load_pope_annotations,
            scorer=scorers.score_pope,
            main_metrics=("f1", "accuracy"),
            question_file="llava_pope_test.jsonl",
            image_folder="val2014",
            annotations="the coco/ folder with coco_pope_{adversarial,popular,random}.json",
            needs_questions_to_score=True,
            upstream="TinyLLaVA_Factory scripts/eval/pope.sh -> tinyllava/eval/model_vqa_pope.py",
        ),
        TaskSpec(
            name="mme",
            title="MME (perception + cognition)",
            question_format="llava_jsonl",
            prompt_suffix=SHORT_ANSWER,
            max_new_tokens=128,
            annotation_loader=loaders.load_mme_annotations,
            scorer=scorers.score_mme,
            main_metrics=("perception", "cognition"),
            question_file="llava_mme.jsonl",
            image_folder="MME_Benchmark_release_version",
            annotations="MME_Benchmark_release_version (the per-subtask question/answer .txt files)",
            upstream="TinyLLaVA_Factory scripts/eval/mme.sh -> tinyllava/eval/model_vqa_loader.py",
        ),
        TaskSpec(
            name="mmmu",
            title="MMMU (validation)",
            question_format="mmmu_anns",
            prompt_suffix=None,
            prompt_suffix_by_type={"multiple-choice": OPTION_LETTER, "open": SHORT_ANSWER},
            max_new_tokens=1024,
            annotation_loader=loaders.load_mmmu_annotations,
            scorer=scorers.score_mmmu,
            main_metrics=("accuracy",),
            question_file="anns_for_eval.json",
            image_folder="all_images",
            annotations="MMMU validation samples with answers (id, question_type, answer, options or index2ans)",
            upstream="TinyLLaVA_Factory scripts/eval/mmmu.sh -> tinyllava/eval/model_vqa_mmmu.py",
        ),
        TaskSpec(
            name="mmvet",
            title="MM-Vet (LLM-judged)",
            question_format="llava_jsonl",
            prompt_suffix=None,  # open-ended answers, judged by an LLM: LLaVA-1.5 adds no format prompt
            max_new_tokens=1024,
            annotation_loader=loaders.load_mmvet_annotations,
            scorer=scorers.score_mmvet,
            main_metrics=("total",),
            needs_judge=True,
            question_file="llava-mm-vet.jsonl",
            image_folder="images",
            annotations="mm-vet.json",
            upstream="TinyLLaVA_Factory scripts/eval/mmvet.sh -> tinyllava/eval/model_vqa.py",
        ),
        TaskSpec(
            name="easy_vqa",
            title="easy-VQA (built in, from the easy-vqa package)",
            question_format="llava_jsonl",
            # The bare question, as the easy-VQA demo fine-tunes on it (tinyllava_hf/demo/data.py: human turn
            # "<image>\n{question}", gpt turn the one-word answer); a suffix the model never saw would only hurt.
            prompt_suffix=None,
            max_new_tokens=16,  # one word and an end token; no upstream script exists for this toy task
            annotation_loader=loaders.load_easy_vqa_annotations,
            scorer=scorers.score_easy_vqa,
            main_metrics=("accuracy",),
            question_file="questions.jsonl (written by tinyllava-hf eval easy-vqa, or eval run without --data)",
            image_folder="the easy-vqa package's data/<split>/images",
            annotations="annotations.jsonl (written next to questions.jsonl)",
            upstream="tinyllava_hf (no upstream TinyLLaVA script)",
        ),
    )
}


def list_tasks() -> list[str]:
    """Names of all registered tasks, sorted."""
    return sorted(TASKS)


def get_task(name: str) -> TaskSpec:
    """The task registered under exactly ``name``; raises :class:`UnknownTaskError` listing valid names."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(name, list(TASKS)) from None


def load_annotations(task: str | TaskSpec, path: PathLike, *, questions_path: PathLike | None = None) -> Annotations:
    """Load the annotations of ``task`` from ``path`` with the task's loader.

    ``questions_path`` (a LLaVA question file) is only used by tasks that map question ids through it (``pope``);
    giving it for another task is an error rather than silently ignored.
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if questions_path is None:
        return spec.annotation_loader(path)
    if not spec.needs_questions_to_score:
        users = ", ".join(repr(name) for name, other in TASKS.items() if other.needs_questions_to_score)
        raise ValueError(f"questions_path is only used by the {users} loader, not {spec.name!r}")
    return spec.annotation_loader(path, questions_path=questions_path)


def score_predictions(
    task: str | TaskSpec, predictions: list[Prediction], annotations: Annotations, judge: Judge | None = None
) -> dict[str, Any]:
    """Score ``predictions`` against ``annotations`` with the task's scorer: its metrics plus the bookkeeping keys
    ``num_scored`` and ``missing`` (see :mod:`~tinyllava_hf.eval.scorers`).

    ``judge`` (``prompt -> reply``) is passed to tasks that need one; giving it to another task is an error, since it
    would otherwise be silently ignored.
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if spec.needs_judge:
        return spec.scorer(predictions, annotations, judge=judge)
    if judge is not None:
        judged = sorted(name for name, other in TASKS.items() if other.needs_judge)
        raise ValueError(f"a judge is only used by {judged}, not {spec.name!r}")
    return spec.scorer(predictions, annotations)


# --------------------------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------------------------


def apply_suffix(text: str, suffix: str | None) -> str:
    """``text`` with ``"\\n" + suffix`` appended, unless it already ends with ``suffix`` (or there is none).

    Image markers are removed first and the text stripped, as upstream's ``replace("<image>", "").strip()`` does.
    """
    # The processor inserts the image placeholders itself (one per image block): a literal one left in the text
    # would break the placeholder count.
    text = text.replace(IMAGE_TOKEN, "").strip()
    if not suffix or text.endswith(suffix):
        return text
    return f"{text}\n{suffix}"


def task_prompt(spec: TaskSpec, text: str, question_type: str | None = None) -> str:
    """The user text for one question of ``spec``: the question with the task's response-format suffix."""
    suffix = spec.prompt_suffix
    if spec.prompt_suffix_by_type:
        if question_type not in spec.prompt_suffix_by_type:
            valid = ", ".join(sorted(spec.prompt_suffix_by_type))
            raise EvalDataError(f"{spec.name}: 'question_type' must be one of {valid}, got {question_type!r}")
        suffix = spec.prompt_suffix_by_type[question_type]
    return apply_suffix(text, suffix)


# --------------------------------------------------------------------------------------------------------------------
# Question files
# --------------------------------------------------------------------------------------------------------------------


def _image_field(record: dict[str, Any], where: str) -> str | None:
    image = record.get("image")
    if image is None or image == "":
        return None
    if not isinstance(image, str):
        raise EvalDataError(f"{where}: 'image' must be a file name, got {type(image).__name__}")
    return image


def _llava_question(spec: TaskSpec, where: str, record: dict[str, Any]) -> EvalQuestion:
    if record.get("question_id") is None:
        raise EvalDataError(f"{where} has no 'question_id'")
    if not isinstance(record.get("text"), str):
        raise EvalDataError(f"{where} (question_id {record['question_id']!r}) has no string 'text'")
    text = task_prompt(spec, record["text"], record.get("question_type"))
    return EvalQuestion(record["question_id"], text, _image_field(record, where), where)


def _scienceqa_question(spec: TaskSpec, where: str, record: dict[str, Any]) -> EvalQuestion:
    if "conversations" not in record:
        # Already converted to LLaVA's question_id/text layout.
        return _llava_question(spec, where, record)
    if record.get("id") is None:
        raise EvalDataError(f"{where} has no 'id'")
    turns = record["conversations"]
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], dict):
        raise EvalDataError(f"{where} (id {record['id']!r}) has no 'conversations' turns")
    value = turns[0].get("value")
    if not isinstance(value, str):
        raise EvalDataError(f"{where} (id {record['id']!r}): the first turn has no string 'value'")
    return EvalQuestion(record["id"], task_prompt(spec, value), _image_field(record, where), where)


def _mmmu_question(spec: TaskSpec, where: str, record: dict[str, Any]) -> EvalQuestion:
    qid = record.get("id", record.get("question_id"))
    if qid is None:
        raise EvalDataError(f"{where} has no 'id'")
    prompt = record.get("prompt", record.get("text"))
    if not isinstance(prompt, str):
        raise EvalDataError(f"{where} (id {qid!r}) has no string 'prompt' (TinyLLaVA's anns_for_eval.json layout)")
    text = task_prompt(spec, prompt, record.get("question_type"))
    return EvalQuestion(qid, text, _image_field(record, where), where)


_READERS = {
    "llava_jsonl": _llava_question,
    "scienceqa_llava": _scienceqa_question,
    "mmmu_anns": _mmmu_question,
}


def load_task_questions(task: str | TaskSpec, path: PathLike) -> list[EvalQuestion]:
    """Read the question file of ``task`` (JSON lines or a JSON list) into :class:`EvalQuestion` objects.

    Questions keep the file's order. Raises :class:`~tinyllava_hf.eval.loaders.EvalDataError` naming the file and
    line for a missing or malformed question, and for an empty file.
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    reader = _READERS[spec.question_format]
    questions = [reader(spec, where, record) for where, record in read_records(path)]
    if not questions:
        raise EvalDataError(f"{Path(path)}: no questions found (empty file)")
    return questions
