"""LLaVA-format training data and evaluation files for the easy-VQA demo, written from the `easy-vqa` package.

easy-VQA (MIT, https://github.com/vzhou842/easy-VQA) ships 4,000 train and 1,000 test 64x64 PNG images, each one
coloured shape on a tinted background, with 38,575 / 9,673 questions about colour, shape and presence (13 answers).
This module writes, under one folder:

    pretrain.json            one caption per train image ("a blue rectangle"), for the connector-only stage: the
                             `pretrain` template trains `<image>` + caption. The package has no captions, so colour
                             and shape are worked out from each image's question/answer pairs (`image_attributes`).
    finetune.json            every train question as a one-turn conversation (human "<image>\\n{question}", gpt
                             "{answer}"), the format the evaluation prompts use; every second question is rewritten
                             the ways people write (`natural_questions`).
    easy_vqa_test/           `questions.jsonl` (LLaVA evaluation questions) and `annotations.jsonl` (answers) of the
                             whole test split or a seeded sample, written by the evaluation's own
                             `tinyllava_hf.easy_vqa`, so training and scoring read the package the same way; and
                             `questions_sentence_case.jsonl`, the same questions in sentence case (`sentence_case`).

Training images are referenced by absolute path into the installed package; nothing is copied.

    from tinyllava_hf.demo.data import write_demo_data
    write_demo_data("outputs/demo/data", test_limit=None, seed=0)
"""

import dataclasses
import json
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..easy_vqa import COLORS, SHAPES, load_easy_vqa, sample_records, write_easy_vqa_files
from ..files import write_text_atomic

__all__ = [
    "COLORS",
    "SENTENCE_CASE_RULE",
    "SHAPES",
    "DemoDataFiles",
    "EasyVqaQuestion",
    "caption_for",
    "image_attributes",
    "image_captions",
    "image_labels",
    "load_split",
    "natural_questions",
    "rewrite_question",
    "rewrite_questions_file",
    "sentence_case",
    "write_demo_data",
]

# The package's 13 answers are the 8 COLORS, the 3 SHAPES, and yes/no.
_COLOR_RE = re.compile(r"\b(" + "|".join(COLORS) + r")\b")
_SHAPE_RE = re.compile(r"\b(" + "|".join(SHAPES) + r")\b")
# Negated presence questions: "is there not a circle?", "does the image not contain ...", "is no rectangle present?"
_NEGATION_RE = re.compile(r"\b(not|no)\b")

# easy-VQA's questions are all lowercase and end in "?", so a model trained on them alone never sees "What": the
# demo's BPE splits it into "W" + "hat" and the model answered the README's "What color is the shape?" with "yes".
# Every second finetune question is therefore rewritten into one of the forms people type. Weights per choice:
_CASES = {"sentence": 0.6, "lower": 0.3, "upper": 0.1}  # "What color ...", "what color ...", "WHAT COLOR ..."
_ENDINGS = {"?": 0.55, "": 0.25, ".": 0.1, " ?": 0.1}
_DOUBLE_SPACE = 0.1  # one space between two words doubled
_OUTER_SPACES = 0.15  # spaces before and after (the chat templates strip them, as upstream; typed all the same)
# The rewriting is part of the data, not of the run: a fixed seed keeps finetune.json and the tokenizer's corpus the
# same text in every demo.
REWRITE_SEED = 0
SENTENCE_CASE_RULE = "first letter upper-cased, the rest unchanged (question mark kept)"


@dataclass(frozen=True)
class EasyVqaQuestion:
    """One easy-VQA question: its index in the split (the `question_id`), text, answer and image."""

    question_id: int
    text: str
    answer: str
    image_id: int
    image: str  # absolute path of the PNG


def load_split(split: str, limit: int | None = None, seed: int = 0) -> list[EasyVqaQuestion]:
    """Questions of the `train` or `test` split of the installed `easy-vqa` package, in the package's order.

    `limit` keeps a fixed seeded sample (the same selection as the evaluation's built-in easy_vqa task).
    """
    records, folder = load_easy_vqa(split)
    return [
        EasyVqaQuestion(
            question_id=record["question_id"],
            text=record["text"],
            answer=record["answer"],
            image_id=int(Path(record["image"]).stem),
            image=str((folder / record["image"]).resolve()),
        )
        for record in sample_records(records, limit, seed)
    ]


def sentence_case(text: str) -> str:
    """`text` with its first letter upper-cased and the rest unchanged: "what color is it?" -> "What color is it?"."""
    return text[:1].upper() + text[1:]


def rewrite_question(text: str, rng: random.Random) -> str:
    """One of the ways a person might type an easy-VQA question: sentence case, lower or upper case; ending in "?",
    " ?", "." or nothing; now and then a doubled space or spaces around it. The words themselves are kept."""
    case = rng.choices(list(_CASES), weights=list(_CASES.values()))[0]
    ending = rng.choices(list(_ENDINGS), weights=list(_ENDINGS.values()))[0]
    text = text.rstrip("?").rstrip()
    text = {"sentence": sentence_case(text), "lower": text, "upper": text.upper()}[case] + ending
    words = text.split(" ")
    if len(words) > 1 and rng.random() < _DOUBLE_SPACE:
        at = rng.randrange(1, len(words))
        text = " ".join(words[:at]) + "  " + " ".join(words[at:])
    if rng.random() < _OUTER_SPACES:
        text = " " * rng.randint(1, 2) + text + " " * rng.randint(1, 2)
    return text


def natural_questions(questions: Sequence[EasyVqaQuestion], seed: int = REWRITE_SEED) -> list[EasyVqaQuestion]:
    """`questions` with every second one (odd positions) rewritten by `rewrite_question`, same count and order.

    Half stay as the package words them, so the original questions keep as much training as the rewritten forms
    take (the finetune stage runs a fixed number of steps, so its time does not change either).
    """
    rng = random.Random(seed)
    return [
        dataclasses.replace(question, text=rewrite_question(question.text, rng)) if index % 2 else question
        for index, question in enumerate(questions)
    ]


def image_attributes(qa_pairs: Iterable[tuple[str, str]]) -> tuple[str | None, str | None]:
    """Colour and shape of one image, deduced from its (question, answer) pairs.

    Direct answers give an attribute ("what color is the triangle?" -> blue, and the shape is a triangle; "what is
    the blue shape?" -> rectangle, and the colour is blue). Yes/no answers assert presence or absence of a mentioned
    colour or shape, flipped by a negation ("is there not a red shape?" + "no" -> red). When only absences are known,
    the attribute is the single value left, if one is.

    Returns:
        `(colour, shape)`, each None when the questions do not determine it.

    Raises:
        ValueError: when the pairs contradict each other (two colours, or a present value that is also absent).
    """
    present: dict[str, set[str]] = {"color": set(), "shape": set()}
    absent: dict[str, set[str]] = {"color": set(), "shape": set()}
    for question, answer in qa_pairs:
        question = question.lower()
        colors, shapes = _COLOR_RE.findall(question), _SHAPE_RE.findall(question)
        if answer in COLORS or answer in SHAPES:
            # The asked-about attribute is the answer; any attribute named in the question is present too.
            present["color" if answer in COLORS else "shape"].add(answer)
            present["color"].update(colors)
            present["shape"].update(shapes)
        elif answer in ("yes", "no"):
            is_present = (answer == "yes") != bool(_NEGATION_RE.search(question))
            target = present if is_present else absent
            target["color"].update(colors)
            target["shape"].update(shapes)
        else:
            raise ValueError(f"Unexpected easy-VQA answer {answer!r} to {question!r}")
    result: list[str | None] = []
    for kind, values in (("color", COLORS), ("shape", SHAPES)):
        if len(present[kind]) > 1 or present[kind] & absent[kind]:
            raise ValueError(f"Contradictory {kind} answers: present {present[kind]}, absent {absent[kind]}")
        if present[kind]:
            result.append(next(iter(present[kind])))
            continue
        left = [value for value in values if value not in absent[kind]]
        result.append(left[0] if len(left) == 1 else None)
    return result[0], result[1]


def caption_for(color: str | None, shape: str | None) -> str:
    """A short caption from what is known: "a blue rectangle", "a blue shape", "a rectangle" or "a shape"."""
    if color and shape:
        return f"a {color} {shape}"
    if color:
        return f"a {color} shape"
    return f"a {shape}" if shape else "a shape"


def image_labels(questions: Sequence[EasyVqaQuestion]) -> dict[int, tuple[str, str | None, str | None]]:
    """`image_id -> (image path, colour, shape)` for every image of `questions`, in order of first appearance."""
    pairs: dict[int, list[tuple[str, str]]] = defaultdict(list)
    paths: dict[int, str] = {}
    for question in questions:
        pairs[question.image_id].append((question.text, question.answer))
        paths.setdefault(question.image_id, question.image)
    return {image_id: (paths[image_id], *image_attributes(qa)) for image_id, qa in pairs.items()}


def image_captions(questions: Sequence[EasyVqaQuestion]) -> dict[int, tuple[str, str]]:
    """`image_id -> (image path, caption)` for every image of `questions`, in order of first appearance."""
    return {
        image_id: (path, caption_for(color, shape))
        for image_id, (path, color, shape) in image_labels(questions).items()
    }


@dataclass(frozen=True)
class DemoDataFiles:
    """Paths written by `write_demo_data`; the test files are the evaluation's own (`tinyllava_hf.easy_vqa`)."""

    pretrain: Path
    finetune: Path
    test_questions: Path
    test_answers: Path
    test_image_folder: Path
    num_test_questions: int
    test_questions_sentence_case: Path  # `test_questions` with each text in `sentence_case`


def write_demo_data(out_dir: str | Path, test_limit: int | None = None, seed: int = 0) -> DemoDataFiles:
    """Write the pretrain/finetune training files and the test question/annotation files under `out_dir`.

    Args:
        out_dir: folder to write into (created).
        test_limit: score a seeded sample of this many test questions; None writes the whole split (9,673).
        seed: seed of the test sample.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = load_split("train")
    pretrain = [
        {
            "id": f"pretrain-{image_id}",
            "image": path,
            # The pretrain template renders only the image and the caption; the instruction is for other templates.
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image."},
                {"from": "gpt", "value": caption},
            ],
        }
        for image_id, (path, caption) in image_captions(train).items()
    ]
    finetune = [
        {
            "id": f"train-{question.question_id}",
            "image": question.image,
            "conversations": [
                {"from": "human", "value": f"<image>\n{question.text}"},
                {"from": "gpt", "value": question.answer},
            ],
        }
        for question in natural_questions(train)
    ]
    write_text_atomic(out_dir / "pretrain.json", json.dumps(pretrain, indent=1))
    write_text_atomic(out_dir / "finetune.json", json.dumps(finetune, indent=1))
    test = write_easy_vqa_files(out_dir / "easy_vqa_test", "test", limit=test_limit, seed=seed)
    sentence_cased = rewrite_questions_file(
        test.questions, test.questions.with_name("questions_sentence_case.jsonl"), sentence_case
    )
    return DemoDataFiles(
        pretrain=out_dir / "pretrain.json",
        finetune=out_dir / "finetune.json",
        test_questions=test.questions,
        test_answers=test.annotations,
        test_image_folder=test.image_folder,
        num_test_questions=test.num_questions,
        test_questions_sentence_case=sentence_cased,
    )


def rewrite_questions_file(questions_file: str | Path, out_file: str | Path, rewrite: Callable[[str], str]) -> Path:
    """Copy an evaluation question file (JSON lines) with each `text` replaced by `rewrite(text)`, all else unchanged.

    The demo writes the sentence-case test questions this way; other forms (upper case, no "?") score the same way.
    """
    lines = []
    for line in Path(questions_file).read_text().splitlines():
        record = json.loads(line)
        record["text"] = rewrite(record["text"])
        lines.append(json.dumps(record) + "\n")
    write_text_atomic(Path(out_file), "".join(lines))
    return Path(out_file)
