"""easy-VQA data: questions and images shipped by the ``easy-vqa`` pip package, as LLaVA-format files.

The one place the package reads easy-VQA: the evaluation's built-in ``easy_vqa`` task (``tinyllava-hf eval``) and the
demo (``tinyllava-hf demo``) both take their questions, answer vocabulary and files from here.

easy-VQA (https://github.com/vzhou842/easy-VQA) has 64x64 images of one coloured shape and questions with one-word
answers (a shape, a colour, yes or no). The package stores questions as ``[text, answer, image_id]`` triples and
images as ``<image_id>.png``; this module writes them as the files the rest of the evaluation reads:

* ``questions.jsonl``: ``{"question_id", "image", "text", "category"}`` per line (LLaVA's question-file layout;
  ``image`` is relative to the package's image folder, ``category`` is ``yes/no``, ``shape`` or ``color``);
* ``annotations.jsonl``: ``{"question_id", "answer"}`` per line, read by the ``easy_vqa`` loader and scorer.

Question ids are the 0-based positions in the package's ``questions.json`` of the split, so they are stable across
samples. ``limit`` with ``seed`` picks a fixed random sample (``random.Random(seed).sample``), kept in id order.

From the command line: ``tinyllava-hf eval easy-vqa --output-dir data/easy_vqa --limit 500 --seed 0``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .eval.loaders import EvalDataError
from .files import PathLike, write_text_atomic

SPLITS: tuple[str, ...] = ("train", "test")
# The package's 13 answers are these 8 colours, 3 shapes, and yes/no. Ordered tuples: the demo's vision-tower
# pretraining uses their positions as class labels.
COLORS: tuple[str, ...] = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SHAPES: tuple[str, ...] = ("circle", "rectangle", "triangle")


@dataclass(frozen=True)
class EasyVqaFiles:
    """Paths written by :func:`write_easy_vqa_files`."""

    questions: Path
    annotations: Path
    image_folder: Path
    num_questions: int


def _package() -> Any:
    try:
        import easy_vqa
    except ImportError:
        raise ImportError(
            "the easy_vqa task reads the easy-vqa package's data: pip install easy-vqa (or tinyllava-hf[demo])"
        ) from None
    return easy_vqa


def answer_category(answer: str) -> str:
    """``yes/no``, ``shape`` or ``color``: the three kinds of easy-VQA question."""
    if answer in ("yes", "no"):
        return "yes/no"
    return "shape" if answer in SHAPES else "color"


def load_easy_vqa(split: str = "test") -> tuple[list[dict[str, Any]], Path]:
    """All questions of one split as records (``question_id``, ``image``, ``text``, ``answer``, ``category``), and
    the folder their ``image`` names are relative to."""
    if split not in SPLITS:
        raise ValueError(f"easy-VQA split must be one of {', '.join(SPLITS)}, got {split!r}")
    package = _package()
    texts, answers, image_ids = package.get_test_questions() if split == "test" else package.get_train_questions()
    paths = package.get_test_image_paths() if split == "test" else package.get_train_image_paths()
    folders = {Path(p).parent for p in paths.values()}
    if len(folders) != 1:
        raise EvalDataError(f"easy-vqa {split} images are not in one folder: {sorted(map(str, folders))[:3]}")
    folder = folders.pop()
    records = []
    for index, (text, answer, image_id) in enumerate(zip(texts, answers, image_ids)):
        if image_id not in paths:
            raise EvalDataError(f"easy-vqa {split} question {index} refers to image {image_id}, which is not shipped")
        records.append(
            {
                "question_id": index,
                "image": Path(paths[image_id]).name,
                "text": text,
                "answer": answer,
                "category": answer_category(answer),
            }
        )
    return records, folder


def sample_records(records: list[dict[str, Any]], limit: int | None, seed: int = 0) -> list[dict[str, Any]]:
    """A fixed random sample of ``limit`` records (all of them when ``limit`` is ``None`` or not smaller), in their
    original order, so the same ``(limit, seed)`` always selects the same questions."""
    if limit is None or limit >= len(records):
        return list(records)
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    chosen = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[index] for index in chosen]


def default_data_dir(base: PathLike, split: str = "test", limit: int | None = None, seed: int = 0) -> Path:
    """Folder name for one selection, so different samples never overwrite each other's files."""
    name = f"easy_vqa_{split}" if limit is None else f"easy_vqa_{split}_n{limit}_seed{seed}"
    return Path(base) / name


def write_easy_vqa_files(
    out_dir: PathLike, split: str = "test", *, limit: int | None = None, seed: int = 0
) -> EasyVqaFiles:
    """Write ``questions.jsonl`` and ``annotations.jsonl`` for a (sampled) split into ``out_dir`` (atomically)."""
    records, folder = load_easy_vqa(split)
    chosen = sample_records(records, limit, seed)
    out_dir = Path(out_dir)
    questions = out_dir / "questions.jsonl"
    annotations = out_dir / "annotations.jsonl"
    question_fields = ("question_id", "image", "text", "category")
    write_text_atomic(questions, "".join(json.dumps({k: r[k] for k in question_fields}) + "\n" for r in chosen))
    write_text_atomic(
        annotations,
        "".join(json.dumps({"question_id": r["question_id"], "answer": r["answer"]}) + "\n" for r in chosen),
    )
    return EasyVqaFiles(questions, annotations, folder, len(chosen))
