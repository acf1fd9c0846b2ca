"""Loaders for benchmark annotation files and model prediction files, read from local paths.

Every annotation loader returns ``dict[str, dict]``: a string key per scorable question (usually ``str(question_id)``)
mapped to a small record holding what the scorer needs. Keys are strings because the same benchmark is published
with integer ids in one file and string ids in another; predictions are joined on ``str(question_id)``.

A wrong or partial file raises :class:`EvalDataError` (a ``ValueError``) whose message names the file and what is
missing, e.g. ``"annotations.json: entry 3 (question_id 42) has no 'answers'"`` or
``"predictions.jsonl line 7 is not JSON (...)"``. JSON list entries are counted from 0, file lines from 1.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike[str]


class EvalDataError(ValueError):
    """A benchmark or prediction file is missing, malformed or lacks a required field."""


class UnknownTaskError(KeyError, ValueError):
    """A task name that is not in the task registry (:data:`~tinyllava_hf.eval.tasks.TASKS`); lists the valid ones.

    Subclasses both ``KeyError`` (it is a failed registry lookup) and ``ValueError`` (it is a bad argument), so
    callers can catch either.
    """

    def __init__(self, task: str, valid: list[str] | tuple[str, ...]) -> None:
        super().__init__(task)
        self.task = task
        self.valid = sorted(valid)

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message; show it plainly instead.
        return f"unknown task {self.task!r}; valid tasks: {', '.join(self.valid)}"


# --------------------------------------------------------------------------------------------------------------------
# Generic readers
# --------------------------------------------------------------------------------------------------------------------


def _loads(text: str, path: Path) -> Any:
    """``json.loads`` that refuses a repeated key in the top-level object (an id -> record file such as GQA's or
    MM-Vet's): plain ``json.loads`` keeps the last one silently, so one question would be scored against the wrong
    answer or vanish. Raises ``json.JSONDecodeError`` like ``json.loads``."""
    repeated: dict[int, str] = {}

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            counts = Counter(key for key, _ in pairs)
            repeated[id(obj)] = next(key for key, count in counts.items() if count > 1)
        return obj

    data = json.loads(text, object_pairs_hook=pairs_hook)
    if isinstance(data, dict) and id(data) in repeated:
        raise EvalDataError(f"{path}: id {repeated[id(data)]!r} appears twice; keep one entry per id")
    return data


def read_json(path: PathLike) -> Any:
    """Read a whole JSON document, raising :class:`EvalDataError` that names the file on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvalDataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise EvalDataError(f"{path}: expected a JSON file, found a directory") from None
    try:
        return _loads(text, path)
    except json.JSONDecodeError as err:
        raise EvalDataError(f"{path} is not valid JSON (line {err.lineno} column {err.colno}: {err.msg})") from None


def _iter_jsonl(path: Path, text: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise EvalDataError(f"{path} line {lineno} is not JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise EvalDataError(f"{path} line {lineno} is not a JSON object")
        yield f"{path} line {lineno}", obj


def read_records(path: PathLike) -> list[tuple[str, dict[str, Any]]]:
    """Read a list of JSON objects from a JSON array file or a JSON-lines file.

    Returns ``(where, record)`` pairs, ``where`` being ``"<file> line N"`` or ``"<file>: entry N"`` for error messages.
    Several published files (e.g. POPE's ``coco_pope_*.json``) are JSON lines despite their ``.json`` extension,
    so the format is detected from the content, not the name.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvalDataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise EvalDataError(f"{path}: expected a file, found a directory") from None
    try:
        whole = _loads(text, path)
    except json.JSONDecodeError:
        # Not one JSON document: treat as JSON lines, which reports the first bad line by number.
        return list(_iter_jsonl(path, text))
    if isinstance(whole, dict):
        return [(f"{path} line 1", whole)]  # a one-line JSON-lines file
    if not isinstance(whole, list):
        raise EvalDataError(f"{path}: expected a JSON list of objects or JSON lines, got {type(whole).__name__}")
    records = []
    for index, entry in enumerate(whole):
        if not isinstance(entry, dict):
            raise EvalDataError(f"{path}: entry {index} is not a JSON object")
        records.append((f"{path}: entry {index}", entry))
    return records


def _mapping_or_records(path: PathLike, record_marker: str) -> dict[str, Any] | list[tuple[str, dict[str, Any]]]:
    """Read either an id -> value JSON object or a list of records (JSON list or JSON lines).

    A single JSON object is a record (a one-line JSON-lines file) when it has ``record_marker`` among its keys,
    otherwise it is taken as an id -> value mapping.
    """
    records = read_records(path)
    if len(records) == 1 and records[0][0].endswith(" line 1") and record_marker not in records[0][1]:
        return records[0][1]
    return records


def _expect_dict(data: Any, path: PathLike, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise EvalDataError(f"{path}: expected {what}, got a JSON {type(data).__name__}")
    return data


def _describe(where: str, record: dict[str, Any], id_field: str = "question_id") -> str:
    """``where`` plus the record's id when it has one, so errors can be found in the file by id."""
    if record.get(id_field) is not None:
        return f"{where} ({id_field} {record[id_field]!r})"
    return where


def _add(out: dict[str, dict[str, Any]], key: str, record: dict[str, Any], where: str) -> None:
    if key in out:
        raise EvalDataError(f"{where}: duplicate id {key!r}")
    out[key] = record


# --------------------------------------------------------------------------------------------------------------------
# Predictions and LLaVA question files
# --------------------------------------------------------------------------------------------------------------------


def read_predictions(path: PathLike) -> list[tuple[str, dict[str, Any]]]:
    """:func:`load_predictions` with each record's ``where`` (``"<file> line N"``), for messages naming lines."""
    predictions = []
    for where, record in read_records(path):
        if record.get("question_id") is None:
            raise EvalDataError(f"{where} has no 'question_id'")
        if not isinstance(record.get("text"), str):
            raise EvalDataError(f"{_describe(where, record)} has no string 'text'")
        predictions.append((where, record))
    if not predictions:
        raise EvalDataError(f"{path}: no predictions found (empty file)")
    return predictions


def load_predictions(path: PathLike) -> list[dict[str, Any]]:
    """Load model predictions: JSON lines (or a JSON list) of objects with ``question_id`` and ``text``.

    Other fields (``prompt``, ``model_id``, ...) are kept; some scorers use ``prompt`` to match LLaVA-style files.
    Repeated ids are allowed here (MME's LLaVA file gives both questions of an image the same id);
    :func:`check_unique_predictions` refuses true duplicates, and ``score_file`` calls it.
    """
    return [record for _, record in read_predictions(path)]


def _line_of(where: str, path: PathLike) -> str:
    # "<file> line 3" -> "line 3", "<file>: entry 3" -> "entry 3": the file is named once in the message.
    return where[len(str(path)) :].lstrip(": ") or where


def check_unique_predictions(rows: list[tuple[str, dict[str, Any]]], path: PathLike) -> None:
    """Refuse two predictions for the same question: the same ``question_id`` and the same ``prompt`` (or neither
    has one). A scorer would silently keep the first, so the score would depend on the order of the lines.

    The same id with *different* prompts is allowed: LLaVA's MME and TextVQA files share ids between questions.
    """
    seen: dict[tuple[str, Any], str] = {}
    for where, record in rows:
        key = (str(record["question_id"]), record.get("prompt"))
        if key in seen:
            raise EvalDataError(
                f"{path}: question_id {record['question_id']!r} is answered twice ({_line_of(seen[key], path)} and "
                f"{_line_of(where, path)}); keep one answer per question (e.g. regenerate into a new file with "
                "tinyllava-hf eval run)"
            )
        seen[key] = where


def load_questions(path: PathLike) -> list[dict[str, Any]]:
    """Load a LLaVA evaluation question file (``question_id``, ``text``, and usually ``image``, ``category``)."""
    questions = []
    for where, record in read_records(path):
        if record.get("question_id") is None:
            raise EvalDataError(f"{where} has no 'question_id'")
        if not isinstance(record.get("text"), str):
            raise EvalDataError(f"{_describe(where, record)} has no string 'text'")
        questions.append(record)
    if not questions:
        raise EvalDataError(f"{path}: no questions found (empty file)")
    return questions


# --------------------------------------------------------------------------------------------------------------------
# VQAv2, TextVQA, GQA
# --------------------------------------------------------------------------------------------------------------------


def _answer_strings(answers: Any, where: str) -> list[str]:
    if not isinstance(answers, list) or not answers:
        raise EvalDataError(f"{where} has no 'answers'")
    out = []
    for index, answer in enumerate(answers):
        # VQAv2 stores {"answer": ..., "answer_id": ...}; TextVQA and converted files store plain strings.
        value = answer.get("answer") if isinstance(answer, dict) else answer
        if not isinstance(value, str):
            raise EvalDataError(f"{where}: answers[{index}] has no string 'answer'")
        out.append(value)
    return out


def _load_answer_lists(
    path: PathLike, list_key: str, expected: str, missing_hint: str, extra_fields: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """The shared reader of VQAv2/TextVQA-style files: `list_key` holds entries with `question_id` and ten human
    `answers`; `extra_fields` are copied into each record as they are."""
    data = _expect_dict(read_json(path), path, expected)
    entries = data.get(list_key)
    if not isinstance(entries, list):
        raise EvalDataError(f"{path}: no '{list_key}' list ({missing_hint})")
    out: dict[str, dict[str, Any]] = {}
    for index, entry in enumerate(entries):
        where = f"{path}: entry {index}"
        if not isinstance(entry, dict) or entry.get("question_id") is None:
            raise EvalDataError(f"{where} has no 'question_id'")
        where = _describe(where, entry)
        record = {"answers": _answer_strings(entry.get("answers"), where)}
        record.update({name: entry.get(name) for name in extra_fields})
        _add(out, str(entry["question_id"]), record, where)
    if not out:
        raise EvalDataError(f"{path}: '{list_key}' is empty")
    return out


def load_vqav2_annotations(path: PathLike) -> dict[str, dict[str, Any]]:
    """Load a VQAv2 annotation file (``v2_mscoco_val2014_annotations.json``: ``annotations[].answers[].answer``)."""
    return _load_answer_lists(
        path,
        "annotations",
        "an object with an 'annotations' list (VQAv2 annotation file)",
        "is this the VQAv2 annotation file, not the questions?",
        ("answer_type", "question_type"),
    )


def load_textvqa_annotations(path: PathLike) -> dict[str, dict[str, Any]]:
    """Load a TextVQA annotation file (``TextVQA_0.5.1_val.json``: ``data[]`` with ``question_id`` and ``answers``).

    ``image_id`` and ``question`` are kept because LLaVA's TextVQA question file uses the image id as its
    ``question_id``; the scorer then matches on (image id, question text) like LLaVA's ``eval_textvqa``.
    """
    return _load_answer_lists(
        path,
        "data",
        "an object with a 'data' list (TextVQA annotation file)",
        "is this TextVQA_0.5.1_val.json?",
        ("image_id", "question"),
    )


def load_gqa_annotations(path: PathLike) -> dict[str, dict[str, Any]]:
    """Load GQA questions with answers (``testdev_balanced_questions.json``: a dict of question id -> question).

    Like the official GQA evaluator, only balanced questions are scored: entries with ``"isBalanced": false`` are
    left out (entries without the flag are kept).
    """
    data = _expect_dict(read_json(path), path, "an object mapping question id -> question (GQA questions file)")
    out: dict[str, dict[str, Any]] = {}
    for qid, entry in data.items():
        where = f"{path}: question {qid!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get("answer"), str):
            raise EvalDataError(f"{where} has no 'answer' (use a questions file with answers, e.g. testdev_balanced)")
        if entry.get("isBalanced") is False:
            continue
        types = entry.get("types") if isinstance(entry.get("types"), dict) else {}
        out[str(qid)] = {"answer": entry["answer"], "structural": types.get("structural")}
    if not out:
        raise EvalDataError(f"{path}: no balanced questions found")
    return out


# --------------------------------------------------------------------------------------------------------------------
# POPE
# --------------------------------------------------------------------------------------------------------------------

_POPE_FILE = re.compile(r"^coco_pope_(?P<split>[^.]+)\.jsonl?$")


def _pope_split_files(path: Path) -> dict[str, Path]:
    if path.is_dir():
        files = {}
        for child in sorted(path.iterdir()):
            match = _POPE_FILE.match(child.name)
            if match:
                files[match.group("split")] = child
        if not files:
            raise EvalDataError(f"{path}: no coco_pope_<split>.json files found")
        return files
    match = _POPE_FILE.match(path.name)
    return {match.group("split") if match else "": path}


def _pope_label(where: str, record: dict[str, Any]) -> str:
    label = record.get("label")
    if not isinstance(label, str) or label.strip().lower() not in ("yes", "no"):
        raise EvalDataError(f"{_describe(where, record)}: 'label' must be 'yes' or 'no', got {label!r}")
    return label.strip().lower()


def load_pope_annotations(path: PathLike, questions_path: PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Load POPE labels from ``coco_pope_{split}.json`` files (a directory of them, or one file).

    Each record is ``{"label": "yes"|"no", "split": ...}``. The split comes from the file name, or from a
    ``category`` field when one file holds several splits.

    POPE's own files number questions 1..N in *every* split, while LLaVA's question file
    (``llava_pope_test.jsonl``) gives them unique ids and a ``category``. Pass that file as ``questions_path`` to key
    the labels by the LLaVA ids: within each split, question rows and label rows are paired in file order (LLaVA's
    ``eval_pope`` rule), and the image names are checked to agree.
    """
    path = Path(path)
    splits: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for file_split, file in _pope_split_files(path).items():
        for where, record in read_records(file):
            split = record.get("category") or file_split
            if not split:
                raise EvalDataError(
                    f"{where}: cannot tell the POPE split (name the file coco_pope_<split>.json or add 'category')"
                )
            _pope_label(where, record)
            splits.setdefault(split, []).append((where, record))

    out: dict[str, dict[str, Any]] = {}
    if questions_path is None:
        for split, rows in splits.items():
            for where, record in rows:
                if record.get("question_id") is None:
                    raise EvalDataError(f"{where} has no 'question_id'")
                key = str(record["question_id"])
                if key in out:
                    raise EvalDataError(
                        f"{where}: question_id {key} is also in split {out[key]['split']!r}; POPE files reuse ids "
                        "across splits, so pass the LLaVA question file (questions_path) to match predictions"
                    )
                out[key] = {"label": _pope_label(where, record), "split": split, "image": record.get("image")}
        return out

    by_category: dict[str, list[dict[str, Any]]] = {}
    for question in load_questions(questions_path):
        if not question.get("category"):
            raise EvalDataError(f"{questions_path}: question_id {question['question_id']!r} has no 'category'")
        by_category.setdefault(question["category"], []).append(question)
    for split, rows in splits.items():
        questions = by_category.get(split, [])
        if len(questions) != len(rows):
            raise EvalDataError(
                f"{questions_path} has {len(questions)} {split!r} questions but the POPE labels have {len(rows)}"
            )
        for question, (where, record) in zip(questions, rows):
            if question.get("image") and record.get("image") and question["image"] != record["image"]:
                raise EvalDataError(
                    f"{where}: image {record['image']!r} does not match {questions_path} question_id "
                    f"{question['question_id']!r} ({question['image']!r}); the files are not in the same order"
                )
            record_out = {"label": _pope_label(where, record), "split": split, "image": record.get("image")}
            _add(out, str(question["question_id"]), record_out, f"{questions_path}")
    return out


# --------------------------------------------------------------------------------------------------------------------
# MME
# --------------------------------------------------------------------------------------------------------------------

# Suffixes that LLaVA's MME question file and the MME ground truth add to the same question; the match key drops
# them (LLaVA's convert_answer_to_mme.py swaps one for the other before looking up the ground truth).
_MME_PROMPT_SUFFIXES = ("Answer the question using a single word or phrase.", "Please answer yes or no.")


def mme_key(category: str, image: str, question: str) -> str:
    """Match key for one MME question: category, image file stem and the question without answer-format suffixes.

    Both questions of an MME image share LLaVA's ``question_id`` (``"<category>/<image file>"``), so the question
    text is part of the key.
    """
    for suffix in _MME_PROMPT_SUFFIXES:
        question = question.replace(suffix, " ")
    question = " ".join(question.split())
    stem = Path(image.replace("\\", "/").split("/")[-1]).stem
    return f"{category}/{stem}::{question}"


def _mme_answer(value: Any, where: str) -> str:
    if not isinstance(value, str) or value.strip().lower() not in ("yes", "no"):
        raise EvalDataError(f"{where}: answer must be 'Yes' or 'No', got {value!r}")
    return value.strip().lower()


def _load_mme_folder(root: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for category_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        # Some subtasks keep images and .txt files side by side, others use images/ + questions_answers_YN/.
        qa_dir = category_dir / "questions_answers_YN"
        if not qa_dir.is_dir():
            qa_dir = category_dir
        for txt in sorted(qa_dir.glob("*.txt")):
            for lineno, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                where = f"{txt} line {lineno}"
                fields = line.strip().split("\t")
                if len(fields) != 2:
                    raise EvalDataError(f"{where}: expected 'question<TAB>answer'")
                question, answer = fields
                record = {
                    "category": category_dir.name,
                    "image": txt.stem,
                    "question": question,
                    "answer": _mme_answer(answer, where),
                }
                _add(out, mme_key(category_dir.name, txt.stem, question), record, where)
    if not out:
        raise EvalDataError(f"{root}: no MME questions found (expected <subtask>/questions_answers_YN/*.txt)")
    return out


def load_mme_annotations(path: PathLike) -> dict[str, dict[str, Any]]:
    """Load MME ground truth, keyed by :func:`mme_key`.

    ``path`` is either the ``MME_Benchmark_release_version`` folder (one folder per subtask holding
    ``questions_answers_YN/*.txt`` or ``*.txt`` files with ``question<TAB>Yes|No`` lines), or a JSON/JSON-lines
    ground-truth file in LLaVA's ``llava_mme.jsonl`` shape plus an ``answer`` field (``question_id`` like
    ``"artwork/10002.jpg"``, ``question`` or ``text``, ``answer``, optional ``category``).
    """
    path = Path(path)
    if path.is_dir():
        return _load_mme_folder(path)
    out: dict[str, dict[str, Any]] = {}
    for where, record in read_records(path):
        qid = record.get("question_id")
        if not isinstance(qid, str):
            raise EvalDataError(f"{where} has no string 'question_id' like '<subtask>/<image>'")
        where = _describe(where, record)
        question = record.get("question", record.get("text"))
        if not isinstance(question, str):
            raise EvalDataError(f"{where} has no 'question'")
        category = record.get("category") or qid.split("/")[0]
        image = record.get("image") or qid
        out_record = {
            "category": category,
            "image": Path(image).stem,
            "question": question,
            "answer": _mme_answer(record.get("answer"), where),
        }
        _add(out, mme_key(category, image, question), out_record, where)
    if not out:
        raise EvalDataError(f"{path}: no MME questions found")
    return out


# --------------------------------------------------------------------------------------------------------------------
# ScienceQA
# --------------------------------------------------------------------------------------------------------------------


def load_scienceqa_annotations(path: PathLike, split: str | None = "test") -> dict[str, dict[str, Any]]:
    """Load ScienceQA ``problems.json`` restricted to one split of ``pid_splits.json`` (next to it).

    ``path`` is the folder holding both files, or ``problems.json`` itself. ``split=None`` keeps every problem.
    Records hold ``choices``, the correct option index ``answer`` and ``has_image``.
    """
    path = Path(path)
    problems_file = path / "problems.json" if path.is_dir() else path
    problems = _expect_dict(read_json(problems_file), problems_file, "an object mapping problem id -> problem")
    if split is None:
        pids = list(problems)
    else:
        splits_file = problems_file.parent / "pid_splits.json"
        splits = _expect_dict(read_json(splits_file), splits_file, "an object mapping split -> problem ids")
        if split not in splits:
            raise EvalDataError(f"{splits_file}: no split {split!r} (available: {', '.join(sorted(splits))})")
        pids = [str(pid) for pid in splits[split]]
        if len(set(pids)) != len(pids):
            repeated = next(pid for pid, count in Counter(pids).items() if count > 1)
            raise EvalDataError(f"{splits_file}: problem {repeated!r} is listed twice in split {split!r}")
        unknown = [pid for pid in pids if pid not in problems]
        if unknown:
            raise EvalDataError(
                f"{splits_file} lists {len(unknown)} {split!r} problems missing from {problems_file} "
                f"(first: {unknown[0]!r})"
            )
    out: dict[str, dict[str, Any]] = {}
    for pid in pids:
        problem = problems[pid]
        where = f"{problems_file}: problem {pid!r}"
        if not isinstance(problem, dict):
            raise EvalDataError(f"{where} is not an object")
        choices = problem.get("choices")
        if not isinstance(choices, list) or not choices:
            raise EvalDataError(f"{where} has no 'choices'")
        answer = problem.get("answer")
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise EvalDataError(f"{where}: 'answer' must be an option index below {len(choices)}, got {answer!r}")
        out[pid] = {"choices": choices, "answer": answer, "has_image": bool(problem.get("image"))}
    return out


# --------------------------------------------------------------------------------------------------------------------
# MMMU
# --------------------------------------------------------------------------------------------------------------------


def mmmu_subject(sample_id: str) -> str:
    """Subject of an MMMU id such as ``"validation_Art_Theory_12"`` -> ``"Art_Theory"`` (official rule)."""
    return "_".join(sample_id.split("_")[1:-1])


def _mmmu_choices(record: dict[str, Any], where: str) -> tuple[list[str], dict[str, str]]:
    index2ans = record.get("index2ans")
    all_choices = record.get("all_choices")
    if index2ans is None and record.get("options") is not None:
        options = record["options"]
        if isinstance(options, str):
            # The MMMU dataset stores options as a Python list literal, e.g. "['4', '8']".
            try:
                options = ast.literal_eval(options)
            except (ValueError, SyntaxError):
                raise EvalDataError(f"{where}: 'options' is not a list") from None
        if not isinstance(options, list):
            raise EvalDataError(f"{where}: 'options' is not a list")
        # Official get_multi_choice_info: options are lettered A, B, C, ... in order.
        index2ans = {chr(ord("A") + i): str(option) for i, option in enumerate(options)}
    if index2ans is not None and not isinstance(index2ans, dict):
        raise EvalDataError(f"{where}: 'index2ans' is not an object")
    if all_choices is None and index2ans is not None:
        all_choices = list(index2ans)
    if not isinstance(all_choices, list) or not all_choices:
        raise EvalDataError(f"{where} is multiple-choice but has no 'all_choices', 'index2ans' or 'options'")
    return [str(c) for c in all_choices], {str(k): str(v) for k, v in (index2ans or {}).items()}


def load_mmmu_annotations(path: PathLike) -> dict[str, dict[str, Any]]:
    """Load MMMU samples with answers.

    Accepts a JSON list / JSON lines of samples (``id``, ``question_type``, ``answer``, and for multiple-choice
    ``all_choices`` + ``index2ans`` or ``options``), or a JSON object mapping id -> sample (``answer`` or the
    ``ground_truth`` of the official ``answer_dict_val.json``, which then also needs the choices).
    """
    data = _mapping_or_records(path, record_marker="question_type")
    if isinstance(data, dict):
        items = [(f"{path}: sample {sid!r}", sid, rec) for sid, rec in data.items()]
    else:
        # LLaVA-style files call the id "question_id"; MMMU's own files call it "id".
        items = [(_describe(where, rec, "id"), rec.get("id", rec.get("question_id")), rec) for where, rec in data]
    out: dict[str, dict[str, Any]] = {}
    for where, sample_id, record in items:
        if not isinstance(record, dict):
            raise EvalDataError(f"{where} is not an object")
        if sample_id is None:
            raise EvalDataError(f"{where} has no 'id'")
        question_type = record.get("question_type")
        if question_type not in ("multiple-choice", "open"):
            raise EvalDataError(f"{where}: 'question_type' must be 'multiple-choice' or 'open', got {question_type!r}")
        answer = record.get("answer", record.get("ground_truth"))
        if not isinstance(answer, str | list) or not answer:
            raise EvalDataError(f"{where} has no 'answer'")
        sample = {
            "question_type": question_type,
            "answer": answer,
            "subject": record.get("subject") or mmmu_subject(str(sample_id)),
        }
        if question_type == "multiple-choice":
            sample["all_choices"], sample["index2ans"] = _mmmu_choices(record, where)
        _add(out, str(sample_id), sample, where)
    if not out:
        raise EvalDataError(f"{path}: no MMMU samples found")
    return out


# --------------------------------------------------------------------------------------------------------------------
# MM-Vet, easy-VQA
# --------------------------------------------------------------------------------------------------------------------


def load_mmvet_annotations(path: PathLike) -> dict[str, dict[str, Any]]:
    """Load ``mm-vet.json``: an object mapping ids like ``"v1_0"`` to ``question``, ``answer`` and ``capability``."""
    data = _expect_dict(read_json(path), path, "an object mapping id -> sample (mm-vet.json)")
    out: dict[str, dict[str, Any]] = {}
    for sample_id, record in data.items():
        where = f"{path}: sample {sample_id!r}"
        if not isinstance(record, dict):
            raise EvalDataError(f"{where} is not an object")
        for field in ("question", "answer"):
            if not isinstance(record.get(field), str):
                raise EvalDataError(f"{where} has no '{field}'")
        capability = record.get("capability")
        if not isinstance(capability, list) or not all(isinstance(c, str) for c in capability):
            raise EvalDataError(f"{where} has no 'capability' list")
        out[str(sample_id)] = {
            "question": record["question"],
            "answer": record["answer"],
            "capability": list(capability),
        }
    if not out:
        raise EvalDataError(f"{path}: no MM-Vet samples found")
    return out


def load_easy_vqa_annotations(path: PathLike) -> dict[str, dict[str, Any]]:
    """Load easy-VQA answers: ``question_id`` + ``answer`` records (JSON list or lines), or an id -> answer object."""
    data = _mapping_or_records(path, record_marker="question_id")
    out: dict[str, dict[str, Any]] = {}
    if isinstance(data, dict):
        for qid, value in data.items():
            answer = value.get("answer") if isinstance(value, dict) else value
            if not isinstance(answer, str):
                raise EvalDataError(f"{path}: question {qid!r} has no 'answer'")
            out[str(qid)] = {"answer": answer}
    else:
        for where, record in data:
            if record.get("question_id") is None:
                raise EvalDataError(f"{where} has no 'question_id'")
            where = _describe(where, record)
            if not isinstance(record.get("answer"), str):
                raise EvalDataError(f"{where} has no 'answer'")
            _add(out, str(record["question_id"]), {"answer": record["answer"]}, where)
    if not out:
        raise EvalDataError(f"{path}: no easy-VQA answers found")
    return out
