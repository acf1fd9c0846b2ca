"""Loader tests: published file shapes load, and wrong or partial files fail with messages naming file and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinyllava_hf.eval.loaders import (
    EvalDataError,
    UnknownTaskError,
    load_easy_vqa_annotations,
    load_gqa_annotations,
    load_mme_annotations,
    load_mmmu_annotations,
    load_mmvet_annotations,
    load_pope_annotations,
    load_predictions,
    load_questions,
    load_scienceqa_annotations,
    load_textvqa_annotations,
    load_vqav2_annotations,
    mme_key,
)
from tinyllava_hf.eval.tasks import load_annotations


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------------------------
# Predictions and question files
# --------------------------------------------------------------------------------------------------------------------


def test_load_predictions_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "predictions.jsonl", [{"question_id": 1, "text": "yes", "model_id": "m"}])
    path.write_text(path.read_text() + "\n" + json.dumps({"question_id": "b", "text": "no"}) + "\n")
    predictions = load_predictions(path)
    assert [p["question_id"] for p in predictions] == [1, "b"]
    assert predictions[0]["model_id"] == "m"


def test_load_predictions_bad_line_is_named(tmp_path: Path) -> None:
    rows = [json.dumps({"question_id": i, "text": "a"}) for i in range(6)] + ["{not json"]
    path = tmp_path / "predictions.jsonl"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(EvalDataError, match=r"predictions\.jsonl line 7 is not JSON"):
        load_predictions(path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"text": "a"}, r"line 2 has no 'question_id'"),
        ({"question_id": 5}, r"line 2 \(question_id 5\) has no string 'text'"),
        ({"question_id": 5, "text": None}, r"has no string 'text'"),
    ],
)
def test_load_predictions_missing_fields(tmp_path: Path, row: dict, message: str) -> None:
    path = write_jsonl(tmp_path / "predictions.jsonl", [{"question_id": 1, "text": "ok"}, row])
    with pytest.raises(EvalDataError, match=message):
        load_predictions(path)


def test_load_predictions_empty_or_absent(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(EvalDataError, match="no predictions"):
        load_predictions(empty)
    with pytest.raises(EvalDataError, match="file not found"):
        load_predictions(tmp_path / "absent.jsonl")


def test_load_questions_requires_text(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "image": "a.jpg", "text": "Q?", "category": "c"}])
    assert load_questions(good)[0]["category"] == "c"
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question_id": 1, "image": "a.jpg"}])
    with pytest.raises(EvalDataError, match=r"bad\.jsonl line 1 \(question_id 1\) has no string 'text'"):
        load_questions(bad)


# --------------------------------------------------------------------------------------------------------------------
# VQAv2, TextVQA, GQA
# --------------------------------------------------------------------------------------------------------------------


def vqav2_entry(qid: int, answers: list[str] | None = None) -> dict:
    answers = answers or ["yes"] * 10
    return {
        "question_id": qid,
        "answer_type": "yes/no",
        "question_type": "is the",
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
    }


def test_load_vqav2(tmp_path: Path) -> None:
    path = write_json(tmp_path / "annotations.json", {"annotations": [vqav2_entry(7), vqav2_entry(8, ["2"] * 10)]})
    annotations = load_vqav2_annotations(path)
    assert set(annotations) == {"7", "8"}  # string keys whatever the id type
    assert annotations["8"]["answers"] == ["2"] * 10
    assert annotations["7"]["answer_type"] == "yes/no"


def test_load_vqav2_entry_without_answers(tmp_path: Path) -> None:
    entries = [vqav2_entry(i) for i in range(3)] + [{"question_id": 42, "answer_type": "other"}]
    path = write_json(tmp_path / "annotations.json", {"annotations": entries})
    with pytest.raises(EvalDataError, match=r"annotations\.json: entry 3 \(question_id 42\) has no 'answers'"):
        load_vqav2_annotations(path)


def test_load_vqav2_rejects_questions_file(tmp_path: Path) -> None:
    path = write_json(tmp_path / "questions.json", {"questions": [{"question_id": 1, "question": "?"}]})
    with pytest.raises(EvalDataError, match="no 'annotations' list"):
        load_vqav2_annotations(path)


def test_load_vqav2_answer_without_text(tmp_path: Path) -> None:
    entry = vqav2_entry(3)
    entry["answers"][4] = {"answer_id": 5}
    path = write_json(tmp_path / "annotations.json", {"annotations": [entry]})
    with pytest.raises(EvalDataError, match=r"answers\[4\] has no string 'answer'"):
        load_vqav2_annotations(path)


def test_load_vqav2_duplicate_id(tmp_path: Path) -> None:
    path = write_json(tmp_path / "annotations.json", {"annotations": [vqav2_entry(1), vqav2_entry(1)]})
    with pytest.raises(EvalDataError, match="duplicate id '1'"):
        load_vqav2_annotations(path)


def test_load_textvqa(tmp_path: Path) -> None:
    data = {"data": [{"question_id": 3, "image_id": "abc", "question": "What?", "answers": ["x"] * 10}]}
    annotations = load_textvqa_annotations(write_json(tmp_path / "TextVQA_0.5.1_val.json", data))
    assert annotations["3"] == {"answers": ["x"] * 10, "image_id": "abc", "question": "What?"}
    with pytest.raises(EvalDataError, match="no 'data' list"):
        load_textvqa_annotations(write_json(tmp_path / "other.json", {"annotations": []}))


def test_load_gqa_skips_unbalanced_and_requires_answers(tmp_path: Path) -> None:
    data = {
        "201": {"answer": "yes", "isBalanced": True, "types": {"structural": "verify"}},
        "202": {"answer": "no", "isBalanced": False},
        "203": {"answer": "left"},
    }
    annotations = load_gqa_annotations(write_json(tmp_path / "testdev_balanced_questions.json", data))
    assert set(annotations) == {"201", "203"}
    assert annotations["201"]["structural"] == "verify"
    with pytest.raises(EvalDataError, match=r"question '9' has no 'answer'"):
        load_gqa_annotations(write_json(tmp_path / "bad.json", {"9": {"question": "?"}}))


def test_invalid_json_is_named(tmp_path: Path) -> None:
    path = tmp_path / "testdev_balanced_questions.json"
    path.write_text('{"1": {"answer": "yes"},')
    with pytest.raises(EvalDataError, match=r"testdev_balanced_questions\.json is not valid JSON \(line 1"):
        load_gqa_annotations(path)


# --------------------------------------------------------------------------------------------------------------------
# POPE
# --------------------------------------------------------------------------------------------------------------------


def make_pope_dir(root: Path) -> Path:
    # POPE's own files are JSON lines named .json, numbering questions from 1 in every split.
    write_jsonl(
        root / "coco_pope_adversarial.json",
        [
            {"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "yes"},
            {"question_id": 2, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "no"},
        ],
    )
    write_jsonl(
        root / "coco_pope_random.json",
        [{"question_id": 1, "image": "b.jpg", "text": "Is there a car in the image?", "label": "yes"}],
    )
    return root


def test_load_pope_single_split_file(tmp_path: Path) -> None:
    make_pope_dir(tmp_path)
    annotations = load_pope_annotations(tmp_path / "coco_pope_adversarial.json")
    assert annotations == {
        "1": {"label": "yes", "split": "adversarial", "image": "a.jpg"},
        "2": {"label": "no", "split": "adversarial", "image": "a.jpg"},
    }


def test_load_pope_colliding_ids_need_question_file(tmp_path: Path) -> None:
    make_pope_dir(tmp_path)
    with pytest.raises(EvalDataError, match="questions_path"):
        load_pope_annotations(tmp_path)


def test_load_pope_with_llava_question_file(tmp_path: Path) -> None:
    pope = make_pope_dir(tmp_path / "coco")
    suffix = "\nAnswer the question using a single word or phrase."
    questions = write_jsonl(
        tmp_path / "llava_pope_test.jsonl",
        [
            {
                "question_id": 1,
                "image": "a.jpg",
                "text": "Is there a dog in the image?" + suffix,
                "category": "adversarial",
            },
            {
                "question_id": 2,
                "image": "a.jpg",
                "text": "Is there a cat in the image?" + suffix,
                "category": "adversarial",
            },
            {"question_id": 10000001, "image": "b.jpg", "text": "Is there a car?" + suffix, "category": "random"},
        ],
    )
    annotations = load_annotations("pope", pope, questions_path=questions)
    assert annotations["10000001"] == {"label": "yes", "split": "random", "image": "b.jpg"}
    assert annotations["2"]["label"] == "no"


def test_load_pope_question_file_out_of_order(tmp_path: Path) -> None:
    pope = make_pope_dir(tmp_path / "coco")
    questions = write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"question_id": 1, "image": "WRONG.jpg", "text": "Q", "category": "adversarial"},
            {"question_id": 2, "image": "a.jpg", "text": "Q", "category": "adversarial"},
            {"question_id": 3, "image": "b.jpg", "text": "Q", "category": "random"},
        ],
    )
    with pytest.raises(EvalDataError, match="does not match"):
        load_pope_annotations(pope, questions_path=questions)


def test_load_pope_bad_label(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "coco_pope_popular.json", [{"question_id": 1, "label": "maybe"}])
    with pytest.raises(EvalDataError, match=r"coco_pope_popular\.json line 1 \(question_id 1\): 'label' must be"):
        load_pope_annotations(path)


# --------------------------------------------------------------------------------------------------------------------
# MME
# --------------------------------------------------------------------------------------------------------------------


def make_mme_folder(root: Path) -> Path:
    # Two published layouts: images/ + questions_answers_YN/ (e.g. "artwork") or .txt files beside images ("OCR").
    qa = root / "artwork" / "questions_answers_YN"
    qa.mkdir(parents=True)
    (qa / "10002.txt").write_text(
        "Is this artwork created by Monet? Please answer yes or no.\tYes\n"
        "Is this artwork created by Degas? Please answer yes or no.\tNo\n"
    )
    (root / "OCR").mkdir()
    (root / "OCR" / "0001.txt").write_text("Is the word in the logo 'cafe'? Please answer yes or no.\tyes\n")
    return root


def test_load_mme_folder_and_llava_key(tmp_path: Path) -> None:
    annotations = load_mme_annotations(make_mme_folder(tmp_path))
    assert len(annotations) == 3
    # The key for LLaVA's question id + prompt matches the ground-truth key despite the different suffix.
    key = mme_key(
        "artwork", "artwork/10002.jpg", "Is this artwork created by Degas?\nAnswer the question using a single word."
    )
    assert key not in annotations  # the suffix must be the exact LLaVA wording
    key = mme_key(
        "artwork",
        "artwork/10002.jpg",
        "Is this artwork created by Degas?\nAnswer the question using a single word or phrase.",
    )
    assert annotations[key] == {
        "category": "artwork",
        "image": "10002",
        "question": "Is this artwork created by Degas? Please answer yes or no.",
        "answer": "no",
    }
    assert {a["category"] for a in annotations.values()} == {"artwork", "OCR"}


def test_load_mme_bad_line(tmp_path: Path) -> None:
    root = make_mme_folder(tmp_path)
    (root / "OCR" / "0002.txt").write_text("Is it red? Please answer yes or no.\tYes\nno tab here\n")
    with pytest.raises(EvalDataError, match=r"0002\.txt line 2: expected 'question<TAB>answer'"):
        load_mme_annotations(root)


def test_load_mme_jsonl_ground_truth(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "mme_gt.jsonl",
        [
            {
                "question_id": "count/000.png",
                "question": "Are there two dogs? Please answer yes or no.",
                "answer": "Yes",
            }
        ],
    )
    annotations = load_mme_annotations(path)
    (record,) = annotations.values()
    assert record["category"] == "count" and record["answer"] == "yes"
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question_id": "count/000.png", "question": "Q?", "answer": "3"}])
    with pytest.raises(EvalDataError, match="answer must be 'Yes' or 'No'"):
        load_mme_annotations(bad)


def test_load_mme_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(EvalDataError, match="no MME questions found"):
        load_mme_annotations(tmp_path)


# --------------------------------------------------------------------------------------------------------------------
# ScienceQA
# --------------------------------------------------------------------------------------------------------------------


def make_scienceqa(root: Path, answer: object = 1) -> Path:
    problems = {
        "1": {"question": "Q1", "choices": ["a", "b"], "answer": answer, "image": "image.png", "split": "test"},
        "2": {"question": "Q2", "choices": ["a", "b", "c"], "answer": 2, "image": None, "split": "test"},
        "3": {"question": "Q3", "choices": ["a", "b"], "answer": 0, "image": None, "split": "train"},
    }
    write_json(root / "problems.json", problems)
    write_json(root / "pid_splits.json", {"train": ["3"], "test": ["1", "2"]})
    return root


def test_load_scienceqa_test_split(tmp_path: Path) -> None:
    annotations = load_scienceqa_annotations(make_scienceqa(tmp_path))
    assert set(annotations) == {"1", "2"}
    assert annotations["1"] == {"choices": ["a", "b"], "answer": 1, "has_image": True}
    assert annotations["2"]["has_image"] is False
    assert set(load_scienceqa_annotations(tmp_path / "problems.json", split=None)) == {"1", "2", "3"}


def test_load_scienceqa_errors(tmp_path: Path) -> None:
    make_scienceqa(tmp_path)
    with pytest.raises(EvalDataError, match=r"no split 'minival' \(available: test, train\)"):
        load_scienceqa_annotations(tmp_path, split="minival")
    make_scienceqa(tmp_path / "bad", answer=5)
    with pytest.raises(EvalDataError, match=r"problem '1': 'answer' must be an option index below 2"):
        load_scienceqa_annotations(tmp_path / "bad")
    (tmp_path / "nosplits").mkdir()
    write_json(tmp_path / "nosplits" / "problems.json", {})
    with pytest.raises(EvalDataError, match=r"pid_splits\.json: file not found"):
        load_scienceqa_annotations(tmp_path / "nosplits")


# --------------------------------------------------------------------------------------------------------------------
# MMMU, MM-Vet, easy-VQA
# --------------------------------------------------------------------------------------------------------------------


def test_load_mmmu_list_with_options_string(tmp_path: Path) -> None:
    samples = [
        {"id": "validation_Art_Theory_3", "question_type": "multiple-choice", "answer": "B", "options": "['x', 'y']"},
        {"id": "validation_Math_1", "question_type": "open", "answer": "5"},
    ]
    annotations = load_mmmu_annotations(write_json(tmp_path / "mmmu.json", samples))
    assert annotations["validation_Art_Theory_3"]["all_choices"] == ["A", "B"]
    assert annotations["validation_Art_Theory_3"]["index2ans"] == {"A": "x", "B": "y"}
    assert annotations["validation_Art_Theory_3"]["subject"] == "Art_Theory"  # from the id, as officially
    assert "all_choices" not in annotations["validation_Math_1"]


def test_load_mmmu_answer_dict_needs_choices_for_multiple_choice(tmp_path: Path) -> None:
    answer_dict = {
        "validation_Math_2": {"question_type": "open", "ground_truth": "7"},
        "validation_Math_3": {"question_type": "multiple-choice", "ground_truth": "A"},
    }
    path = write_json(tmp_path / "answer_dict_val.json", answer_dict)
    with pytest.raises(EvalDataError, match=r"sample 'validation_Math_3' is multiple-choice but has no 'all_choices'"):
        load_mmmu_annotations(path)
    answer_dict["validation_Math_3"]["all_choices"] = ["A", "B"]
    annotations = load_mmmu_annotations(write_json(path, answer_dict))
    assert annotations["validation_Math_2"]["answer"] == "7"
    assert annotations["validation_Math_3"]["index2ans"] == {}


def test_load_mmmu_bad_question_type(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mmmu.jsonl", [{"id": "validation_Art_1", "question_type": "essay", "answer": "x"}])
    with pytest.raises(EvalDataError, match=r"\(id 'validation_Art_1'\): 'question_type' must be"):
        load_mmmu_annotations(path)


def test_load_mmvet(tmp_path: Path) -> None:
    data = {"v1_0": {"imagename": "v1_0.png", "capability": ["ocr"], "question": "Q?", "answer": "A"}}
    assert load_mmvet_annotations(write_json(tmp_path / "mm-vet.json", data))["v1_0"]["capability"] == ["ocr"]
    del data["v1_0"]["capability"]
    with pytest.raises(EvalDataError, match=r"mm-vet\.json: sample 'v1_0' has no 'capability' list"):
        load_mmvet_annotations(write_json(tmp_path / "mm-vet.json", data))


def test_load_easy_vqa_formats(tmp_path: Path) -> None:
    mapping = load_easy_vqa_annotations(write_json(tmp_path / "a.json", {"1": "circle", "2": {"answer": "blue"}}))
    assert mapping == {"1": {"answer": "circle"}, "2": {"answer": "blue"}}
    rows = load_easy_vqa_annotations(write_jsonl(tmp_path / "a.jsonl", [{"question_id": 3, "answer": "red"}]))
    assert rows == {"3": {"answer": "red"}}
    with pytest.raises(EvalDataError, match=r"line 1 \(question_id 4\) has no 'answer'"):
        load_easy_vqa_annotations(write_jsonl(tmp_path / "b.jsonl", [{"question_id": 4}]))


# --------------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------------


def test_load_annotations_registry(tmp_path: Path) -> None:
    path = write_json(tmp_path / "a.json", {"1": "circle"})
    assert load_annotations("easy_vqa", path) == {"1": {"answer": "circle"}}
    with pytest.raises(UnknownTaskError, match="valid tasks: easy_vqa, gqa"):
        load_annotations("easy-vqa", path)
    with pytest.raises(ValueError, match="only used by the 'pope' loader"):
        load_annotations("easy_vqa", path, questions_path=path)
