"""Tests for the benchmark task registry (prompts, question files, scorer/loader pairing) and the easy-VQA task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinyllava_hf.easy_vqa import (
    answer_category,
    default_data_dir,
    load_easy_vqa,
    sample_records,
    write_easy_vqa_files,
)
from tinyllava_hf.eval import UnknownTaskError, load_annotations, loaders, scorers
from tinyllava_hf.eval.loaders import EvalDataError
from tinyllava_hf.eval.tasks import (
    OPTION_LETTER,
    SHORT_ANSWER,
    TASKS,
    apply_suffix,
    get_task,
    list_tasks,
    load_task_questions,
    task_prompt,
)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------------

EXPECTED_TASKS = ["easy_vqa", "gqa", "mme", "mmmu", "mmvet", "pope", "scienceqa", "textvqa", "vqav2"]


def test_registry_names_match_the_scorers() -> None:
    assert list_tasks() == EXPECTED_TASKS
    scorer_names = sorted(name.removeprefix("score_") for name in dir(scorers) if name.startswith("score_"))
    assert list_tasks() == scorer_names  # every scorer can be run, every task can be scored


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_pairs_with_an_existing_scorer_loader_and_prompt(name: str) -> None:
    spec = get_task(name)
    assert spec.name == name
    assert spec.scorer is getattr(scorers, f"score_{name}")
    assert spec.annotation_loader is getattr(loaders, f"load_{name}_annotations")
    assert spec.main_metrics  # the report has a headline metric for it
    assert spec.max_new_tokens >= 1
    # Suffixes are the two upstream response-format prompts, verbatim (or none for open-ended / demo tasks).
    suffixes = [spec.prompt_suffix, *spec.prompt_suffix_by_type.values()]
    assert all(s in (None, SHORT_ANSWER, OPTION_LETTER) for s in suffixes)
    assert spec.question_file and spec.image_folder and spec.annotations and spec.upstream
    # The task prompt can be built (MMMU needs a question type).
    question_type = next(iter(spec.prompt_suffix_by_type), None)
    prompt = task_prompt(spec, "What is it?", question_type)
    assert prompt.startswith("What is it?")


def test_upstream_prompts_and_budgets() -> None:
    # LLaVA-1.5 / TinyLLaVA_Factory eval scripts (see tasks.py for the sources).
    for name in ("vqav2", "gqa", "textvqa", "pope", "mme"):
        assert TASKS[name].prompt_suffix == SHORT_ANSWER
        assert TASKS[name].max_new_tokens == 128  # model_vqa_loader.py / model_vqa_pope.py default
    assert TASKS["scienceqa"].prompt_suffix == OPTION_LETTER
    assert TASKS["mmvet"].prompt_suffix is None
    assert dict(TASKS["mmmu"].prompt_suffix_by_type) == {"multiple-choice": OPTION_LETTER, "open": SHORT_ANSWER}
    for name in ("scienceqa", "mmmu", "mmvet"):
        assert TASKS[name].max_new_tokens == 1024
    assert SHORT_ANSWER == "Answer the question using a single word or phrase."
    assert OPTION_LETTER == "Answer with the option's letter from the given choices directly."
    assert TASKS["pope"].needs_questions_to_score
    assert not TASKS["gqa"].needs_questions_to_score


def test_task_names_are_exact() -> None:
    for wrong in ("GQA", "gqa ", "easy-vqa", "sqa", "mm-vet", ""):
        with pytest.raises(UnknownTaskError, match="valid tasks: easy_vqa, gqa"):
            get_task(wrong)


# --------------------------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------------------------


def test_suffix_is_appended_once() -> None:
    assert apply_suffix("What color?", SHORT_ANSWER) == f"What color?\n{SHORT_ANSWER}"
    # LLaVA's question files already carry it: unchanged.
    assert apply_suffix(f"What color?\n{SHORT_ANSWER}", SHORT_ANSWER) == f"What color?\n{SHORT_ANSWER}"
    assert apply_suffix("  What color?  ", None) == "What color?"
    # Literal image markers are dropped (the processor adds the placeholders), as upstream's replace().strip().
    assert apply_suffix("<image>\nWhat color?", SHORT_ANSWER) == f"What color?\n{SHORT_ANSWER}"


def test_mmmu_suffix_follows_the_question_type() -> None:
    mmmu = get_task("mmmu")
    assert task_prompt(mmmu, "Q?\n(A) 1\n(B) 2", "multiple-choice").endswith(f"(B) 2\n{OPTION_LETTER}")
    assert task_prompt(mmmu, "Q?", "open") == f"Q?\n{SHORT_ANSWER}"
    with pytest.raises(EvalDataError, match="'question_type' must be one of multiple-choice, open"):
        task_prompt(mmmu, "Q?", None)


# --------------------------------------------------------------------------------------------------------------------
# Question files
# --------------------------------------------------------------------------------------------------------------------


def test_llava_question_file(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "llava_gqa_testdev_balanced.jsonl",
        [
            {"question_id": "201307251", "image": "n435808.jpg", "text": f"Is it a dog?\n{SHORT_ANSWER}"},
            {"question_id": 7, "image": "b.jpg", "text": "What color?"},
            {"question_id": 8, "text": "No image here?"},
        ],
    )
    questions = load_task_questions("gqa", path)
    assert [q.question_id for q in questions] == ["201307251", 7, 8]  # ids kept as written
    assert [q.text for q in questions] == [
        f"Is it a dog?\n{SHORT_ANSWER}",
        f"What color?\n{SHORT_ANSWER}",
        f"No image here?\n{SHORT_ANSWER}",
    ]
    assert [q.image for q in questions] == ["n435808.jpg", "b.jpg", None]
    assert questions[1].where == f"{path} line 2"


def test_scienceqa_question_file_matches_upstream(tmp_path: Path) -> None:
    # llava_test_CQM-A.json: a JSON list with LLaVA conversations; model_vqa_science.py --single-pred-prompt.
    first_turn = "<image>\nContext: A map.\nWhich state is highlighted?\nOptions: (A) Ohio (B) Utah"
    path = tmp_path / "llava_test_CQM-A.json"
    path.write_text(
        json.dumps(
            [
                {"id": "4", "image": "4/image.png", "conversations": [{"from": "human", "value": first_turn}]},
                {"id": "5", "conversations": [{"from": "human", "value": "Which is a solid?\nOptions: (A) a (B) b"}]},
            ]
        )
    )
    questions = load_task_questions("scienceqa", path)
    upstream = first_turn.replace("<image>", "").strip() + "\n" + OPTION_LETTER
    assert questions[0].text == upstream
    assert (questions[0].question_id, questions[0].image) == ("4", "4/image.png")
    assert questions[1].image is None  # text-only ScienceQA question


def test_mmmu_question_file(tmp_path: Path) -> None:
    path = tmp_path / "anns_for_eval.json"
    path.write_text(
        json.dumps(
            [
                {
                    "id": "validation_Art_1",
                    "prompt": f"<image 1> Which one?\n(A) x\n(B) y\n{OPTION_LETTER}",
                    "image": "validation_Art_1.png",
                    "question_type": "multiple-choice",
                },
                {"id": "validation_Math_2", "prompt": "How many?", "question_type": "open"},
            ]
        )
    )
    first, second = load_task_questions("mmmu", path)
    assert first.text.endswith(f"(B) y\n{OPTION_LETTER}") and first.text.count(OPTION_LETTER) == 1
    assert first.image == "validation_Art_1.png"
    assert second.text == f"How many?\n{SHORT_ANSWER}" and second.image is None


def test_question_file_errors_name_the_line(tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "text": "ok"}, {"text": "no id"}])
    with pytest.raises(EvalDataError, match=r"q\.jsonl line 2 has no 'question_id'"):
        load_task_questions("vqav2", bad)
    no_text = write_jsonl(tmp_path / "t.jsonl", [{"question_id": 3, "image": "a.png"}])
    with pytest.raises(EvalDataError, match=r"t\.jsonl line 1 \(question_id 3\) has no string 'text'"):
        load_task_questions("pope", no_text)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(EvalDataError, match="no questions found"):
        load_task_questions("mme", empty)
    with pytest.raises(EvalDataError, match="file not found"):
        load_task_questions("mme", tmp_path / "missing.jsonl")


# --------------------------------------------------------------------------------------------------------------------
# easy-VQA (the real package data)
# --------------------------------------------------------------------------------------------------------------------


def test_easy_vqa_package_data() -> None:
    import easy_vqa

    records, folder = load_easy_vqa("test")
    texts, answers, _ = easy_vqa.get_test_questions()
    assert len(records) == len(texts) == 9673
    assert [r["question_id"] for r in records[:3]] == [0, 1, 2]  # position in the package's questions.json
    assert records[0]["text"] == texts[0] and records[0]["answer"] == answers[0]
    assert all((folder / r["image"]).is_file() for r in records[:50])
    assert {answer_category(a) for a in answers} == {"yes/no", "shape", "color"}
    with pytest.raises(ValueError, match="split must be one of train, test"):
        load_easy_vqa("val")


def test_easy_vqa_seeded_sample_is_fixed() -> None:
    records, _ = load_easy_vqa("test")
    first = [r["question_id"] for r in sample_records(records, 20, seed=3)]
    assert first == [r["question_id"] for r in sample_records(records, 20, seed=3)]
    assert first != [r["question_id"] for r in sample_records(records, 20, seed=4)]
    assert first == sorted(first) and len(set(first)) == 20
    assert len(sample_records(records, None)) == len(records)
    assert default_data_dir("out", "test", 20, 3) == Path("out/easy_vqa_test_n20_seed3")
    assert default_data_dir("out", "test") == Path("out/easy_vqa_test")


def test_easy_vqa_files_load_as_task_questions_and_annotations(tmp_path: Path) -> None:
    files = write_easy_vqa_files(tmp_path / "easy", "test", limit=5, seed=1)
    assert files.num_questions == 5
    questions = load_task_questions("easy_vqa", files.questions)
    annotations = load_annotations("easy_vqa", files.annotations)
    assert [str(q.question_id) for q in questions] == list(annotations)
    records = {r["question_id"]: r for r in load_easy_vqa("test")[0]}
    for question in questions:
        assert question.text == records[question.question_id]["text"]  # bare question: the demo's training format
        assert (files.image_folder / question.image).is_file()
        assert annotations[str(question.question_id)]["answer"] == records[question.question_id]["answer"]
