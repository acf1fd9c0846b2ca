"""Scorer tests: hand-made cases whose expected values are worked out in the comments."""

from __future__ import annotations

import random

import pytest

from tinyllava_hf.eval.loaders import UnknownTaskError, mme_key
from tinyllava_hf.eval.scorers import (
    MMVET_JUDGE_PROMPT,
    MMVET_RETRY_SUFFIX,
    build_mmvet_prompt,
    eval_multi_choice,
    eval_open,
    match_predictions,
    mme_yes_no,
    parse_mmvet_score,
    parse_multi_choice_response,
    parse_open_response,
    parse_scienceqa_answer,
    pope_yes_no,
    score_easy_vqa,
    score_gqa,
    score_mme,
    score_mmmu,
    score_mmvet,
    score_pope,
    score_scienceqa,
    score_textvqa,
    score_vqav2,
    textvqa_accuracy,
    vqa_soft_accuracy,
    vqav2_accuracy,
)
from tinyllava_hf.eval.tasks import get_task, list_tasks
from tinyllava_hf.eval.vqa_normalize import evalai_normalize, normalize_answer, process_punctuation


def preds(*pairs: tuple[object, str], **extra: object) -> list[dict]:
    return [{"question_id": qid, "text": text, **extra} for qid, text in pairs]


# --------------------------------------------------------------------------------------------------------------------
# VQA normalisation
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two dogs.", "2 dogs"),  # number word -> digit, final period dropped
        ("the cat", "cat"),  # article removed
        ("A dog", "dog"),  # articles are matched after lower-casing
        ("dont", "don't"),  # contraction restored
        ("1,000", "1000"),  # comma between digits: punctuation deleted, not spaced
        ("1,000 dogs, 2 cats", "1000 dogs 2 cats"),  # digit comma present -> *every* mark is deleted
        ("red,blue", "red blue"),  # no digit comma, no adjacent space -> comma becomes a space
        ("red, blue", "red blue"),  # comma next to a space is deleted
        ("2.5", "2.5"),  # a period followed by a digit is a decimal point and stays
        ("2.", "2"),  # a period not followed by a digit goes
        ("Yes!", "yes"),
        ("3:00", "3:00"),  # colon is not in the official punctuation list
        ("  none\n", "0"),  # whitespace cleaned, "none" counts as zero
    ],
)
def test_normalize_answer_official_rules(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_period_removal_is_capped_like_the_official_script() -> None:
    # Official code passes re.UNICODE (== 32) as the `count` of re.sub: 40 periods -> 32 removed, 8 remain.
    assert normalize_answer("x" + "." * 40) == "x" + "." * 8


def test_process_punctuation_checks_the_input_text() -> None:
    # "-" touches a space in the input, so it is deleted; "/" does not, so it becomes a space.
    assert process_punctuation("black - white/grey") == "black  white grey"


def test_evalai_normalize_differs_on_commas_question_marks_and_possessives() -> None:
    assert evalai_normalize("Yes, 1,000?") == "yes 1000"
    assert evalai_normalize("red,blue") == "redblue"  # comma deleted up front (official VQA: "red blue")
    assert evalai_normalize("man's") == "man 's"
    assert normalize_answer("man's") == "man's"


# --------------------------------------------------------------------------------------------------------------------
# VQAv2 / TextVQA soft accuracy
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        # k of 10 answers match; a leave-one-out subset that drops a match sees k-1 matches, the others see k.
        (0, 0.0),
        (1, 0.3),  # (1*min(1,0/3) + 9*min(1,1/3)) / 10 = 3/10
        (2, 0.6),  # (2*(1/3) + 8*(2/3)) / 10 = (2/3 + 16/3) / 10 = 6/10
        (3, 0.9),  # (3*(2/3) + 7*1) / 10 = 9/10
        (4, 1.0),  # (4*1 + 6*1) / 10: every subset still has >= 3 matches
    ],
)
def test_vqa_soft_accuracy_leave_one_out(matches: int, expected: float) -> None:
    answers = ["cat"] * matches + ["dog"] * (10 - matches)
    assert vqa_soft_accuracy("cat", answers) == pytest.approx(expected)


def test_vqav2_accuracy_normalises_prediction() -> None:
    assert vqav2_accuracy("Two.", ["2"] * 10) == pytest.approx(1.0)
    # Official quirk kept: unanimous human answers are compared as published, without number-word mapping.
    assert vqav2_accuracy("2", ["two"] * 10) == 0.0
    # TextVQA (m4c) normalises the human answers too.
    assert textvqa_accuracy("2", ["two"] * 10) == pytest.approx(1.0)


def test_score_vqav2_overall_per_type_and_missing() -> None:
    annotations = {
        "1": {"answers": ["yes"] * 10, "answer_type": "yes/no"},
        "2": {"answers": ["2", "2"] + ["3"] * 8, "answer_type": "number"},
        "3": {"answers": ["red"] * 10, "answer_type": "other"},
    }
    # q1 "Yes" -> 1.0; q2 "two" -> "2", 2 of 10 match -> 0.6; q3 unanswered; q99 unknown.
    result = score_vqav2(preds((1, "Yes"), (2, "two"), (99, "x")), annotations)
    assert result["accuracy"] == pytest.approx(80.0)  # (1.0 + 0.6) / 2
    assert result["per_answer_type"] == {"number": pytest.approx(60.0), "yes/no": pytest.approx(100.0)}
    assert result["num_scored"] == 2
    assert result["missing"] == {
        "predictions_without_annotation": 1,
        "annotations_without_prediction": 1,
        "duplicate_predictions": 0,
    }


def test_score_textvqa_matches_llava_image_id_and_prompt() -> None:
    annotations = {
        "10": {"answers": ["stop"] * 10, "image_id": "img1", "question": "What does the sign say?"},
        "11": {"answers": ["red"] * 3 + ["blue"] * 7, "image_id": "img1", "question": "What color is it?"},
    }
    predictions = [
        # LLaVA's TextVQA ids are image ids; the question comes from the prompt (Reference OCR layout).
        {
            "question_id": "img1",
            "prompt": "What does the sign say?\nReference OCR token: STOP\nAnswer the question using a single word.",
            "text": "STOP",
        },
        {"question_id": 11, "text": "Red."},  # direct TextVQA id; 3 of 10 match -> 0.9
    ]
    result = score_textvqa(predictions, annotations)
    assert result["num_scored"] == 2
    assert result["accuracy"] == pytest.approx(95.0)  # (1.0 + 0.9) / 2


# --------------------------------------------------------------------------------------------------------------------
# GQA
# --------------------------------------------------------------------------------------------------------------------


def test_score_gqa_exact_match_after_llava_normalisation() -> None:
    annotations = {
        "a": {"answer": "yes", "structural": "verify"},
        "b": {"answer": "right", "structural": "query"},
        "c": {"answer": "table", "structural": "query"},
    }
    # "Yes." -> "yes" (right, binary); "Left" wrong (open); "the table" is not "table": GQA has no article removal.
    result = score_gqa(preds(("a", "Yes."), ("b", "Left"), ("c", "the table")), annotations)
    assert result["accuracy"] == pytest.approx(100 / 3)
    assert result["binary_accuracy"] == pytest.approx(100.0)
    assert result["open_accuracy"] == pytest.approx(0.0)


# --------------------------------------------------------------------------------------------------------------------
# POPE
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", "yes"),
        ("Yes, there is a dog in the image.", "yes"),
        ("No", "no"),
        ("No, there is no dog.", "no"),
        ("There is not a dog in the image.", "no"),
        ("I see a dog. No wait", "yes"),  # only the first sentence counts
        ("NO", "yes"),  # upstream matches the exact words No / not / no
    ],
)
def test_pope_yes_no_upstream_rule(text: str, expected: str) -> None:
    assert pope_yes_no(text) == expected


def test_score_pope_confusion_matrix_by_hand() -> None:
    labels = {
        # adversarial: labels yes yes yes no no no; answers yes yes no yes no no
        # -> TP=2 (1,2) FN=1 (3) FP=1 (4) TN=2 (5,6)
        # accuracy 4/6, precision 2/3, recall 2/3, F1 2/3, yes-ratio 3/6
        1: ("adversarial", "yes", "Yes"),
        2: ("adversarial", "yes", "Yes, there is."),
        3: ("adversarial", "yes", "No"),
        4: ("adversarial", "no", "Yes"),
        5: ("adversarial", "no", "No, there is not."),
        6: ("adversarial", "no", "no"),
        # random: labels yes no; answers yes yes -> TP=1 FP=1: accuracy 1/2, precision 1/2, recall 1, F1 2/3
        7: ("random", "yes", "Yes"),
        8: ("random", "no", "Yes"),
    }
    annotations = {str(q): {"split": s, "label": lab} for q, (s, lab, _) in labels.items()}
    result = score_pope(preds(*[(q, text) for q, (_, _, text) in labels.items()]), annotations)
    adv = result["splits"]["adversarial"]
    assert (adv["tp"], adv["fn"], adv["fp"], adv["tn"]) == (2, 1, 1, 2)
    assert adv["accuracy"] == pytest.approx(400 / 6)
    assert adv["precision"] == pytest.approx(200 / 3)
    assert adv["recall"] == pytest.approx(200 / 3)
    assert adv["f1"] == pytest.approx(200 / 3)
    assert adv["yes_ratio"] == pytest.approx(50.0)
    rnd = result["splits"]["random"]
    assert (rnd["accuracy"], rnd["precision"], rnd["recall"]) == pytest.approx((50.0, 50.0, 100.0))
    assert rnd["f1"] == pytest.approx(200 / 3)  # 2 * 0.5 * 1 / 1.5
    assert rnd["yes_ratio"] == pytest.approx(100.0)
    # Headline numbers are averages over the splits present.
    assert result["f1"] == pytest.approx(200 / 3)
    assert result["accuracy"] == pytest.approx((400 / 6 + 50.0) / 2)


def test_score_pope_no_positive_predictions_does_not_divide_by_zero() -> None:
    annotations = {"1": {"split": "popular", "label": "yes"}}
    split = score_pope(preds((1, "No")), annotations)["splits"]["popular"]
    assert (split["precision"], split["recall"], split["f1"], split["accuracy"]) == (0.0, 0.0, 0.0, 0.0)


# --------------------------------------------------------------------------------------------------------------------
# MME
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", "yes"),
        ("yes.", "yes"),  # "yes" within the first 4 characters
        ("No, it is not.", "no"),
        ("Not sure", "no"),  # "not " contains "no": the official prefix rule
        ("There is a dog", "other"),
    ],
)
def test_mme_yes_no_official_rule(text: str, expected: str) -> None:
    assert mme_yes_no(text) == expected


def _mme_annotations() -> dict[str, dict]:
    rows = [
        ("existence", "img1", "Is there a dog?", "yes"),
        ("existence", "img1", "Is there a cat?", "no"),
        ("existence", "img2", "Is there a car?", "yes"),
        ("existence", "img2", "Is there a bus?", "no"),
        ("existence", "img3", "Is there a cup?", "yes"),
        ("existence", "img3", "Is there a pen?", "no"),
        ("code_reasoning", "c1", "Does the code print 3?", "yes"),
        ("code_reasoning", "c1", "Does the code print 4?", "no"),
    ]
    return {
        mme_key(cat, image, f"{q} Please answer yes or no."): {
            "category": cat,
            "image": image,
            "question": q,
            "answer": answer,
        }
        for cat, image, q, answer in rows
    }


def _mme_pred(category: str, image: str, question: str, text: str) -> dict:
    # LLaVA's llava_mme.jsonl layout: both questions of an image share "<subtask>/<image file>".
    return {
        "question_id": f"{category}/{image}.png",
        "prompt": f"{question}\nAnswer the question using a single word or phrase.",
        "text": text,
    }


def test_score_mme_acc_plus_by_hand() -> None:
    predictions = [
        _mme_pred("existence", "img1", "Is there a dog?", "Yes"),  # right
        _mme_pred("existence", "img1", "Is there a cat?", "No"),  # right   -> img1 both right
        _mme_pred("existence", "img2", "Is there a car?", "Yes"),  # right
        _mme_pred("existence", "img2", "Is there a bus?", "Yes"),  # wrong   -> img2 not both right
        _mme_pred("existence", "img3", "Is there a cup?", "Yes"),  # right, but img3's 2nd question unanswered
        _mme_pred("code_reasoning", "c1", "Does the code print 3?", "Yes"),
        _mme_pred("code_reasoning", "c1", "Does the code print 4?", "No"),
    ]
    result = score_mme(predictions, _mme_annotations())
    existence = result["subtasks"]["existence"]
    # acc = 4 right / 5 answered = 80; acc+ over fully answered images (img1, img2) = 1/2 = 50; score = 130.
    assert existence["acc"] == pytest.approx(80.0)
    assert existence["acc_plus"] == pytest.approx(50.0)
    assert existence["score"] == pytest.approx(130.0)
    assert existence["num_images"] == 2
    # code_reasoning: 2/2 and 1/1 -> 100 + 100.
    assert result["subtasks"]["code_reasoning"]["score"] == pytest.approx(200.0)
    assert result["perception"] == pytest.approx(130.0)
    assert result["cognition"] == pytest.approx(200.0)
    assert result["total"] == pytest.approx(330.0)
    assert "count" in result["missing_subtasks"] and "existence" not in result["missing_subtasks"]
    assert result["missing"]["annotations_without_prediction"] == 1


def test_score_mme_requires_prompt_to_tell_questions_apart() -> None:
    with pytest.raises(ValueError, match="no 'prompt'"):
        score_mme(preds(("existence/img1.png", "Yes")), _mme_annotations())


# --------------------------------------------------------------------------------------------------------------------
# ScienceQA
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A", "A"),
        ("B. A cat", "B"),  # letter, period, space at the start
        ("The answer is C.", "C"),
        ("Because of this, The answer is D.", "D"),
        ("A.", "FAILED"),  # LLaVA's rule needs "A. " + text, or a bare "A"
        ("The answer is A. The answer is B.", "FAILED"),  # more than one "The answer is"
        ("a", "FAILED"),  # case-sensitive upstream
    ],
)
def test_parse_scienceqa_answer(text: str, expected: str) -> None:
    assert parse_scienceqa_answer(text) == expected


def test_score_scienceqa_image_and_overall_accuracy() -> None:
    annotations = {
        "p1": {"choices": ["x", "y", "z"], "answer": 0, "has_image": True},
        "p2": {"choices": ["x", "y"], "answer": 1, "has_image": True},
        "p3": {"choices": ["x", "y", "z"], "answer": 2, "has_image": False},
        "p4": {"choices": ["x", "y", "z"], "answer": 0, "has_image": True},
    }
    # p1 "A" right; p2 "The answer is B." right; p3 "A." unparsed -> wrong; p4 "D" beyond 3 choices -> wrong.
    predictions = preds(("p1", "A"), ("p2", "The answer is B."), ("p3", "A."), ("p4", "D"))
    result = score_scienceqa(predictions, annotations)
    assert result["accuracy"] == pytest.approx(50.0)  # 2 / 4
    assert result["img_accuracy"] == pytest.approx(200 / 3)  # p1, p2 right of p1, p2, p4
    assert result["num_img"] == 3
    assert result["num_unparsed"] == 1


# --------------------------------------------------------------------------------------------------------------------
# MMMU
# --------------------------------------------------------------------------------------------------------------------

CHOICES = ["A", "B", "C", "D"]
INDEX2ANS = {"A": "London", "B": "Paris", "C": "Rome", "D": "Berlin"}


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("(B)", "B"),
        ("B", "B"),
        ("The answer is C.", "C"),  # " C " after stripping the final period
        ("Between (A) and (C), I pick (C)", "C"),  # several bracketed candidates: the last occurrence wins
        ("I think it is Paris because it is the capital", "B"),  # > 5 words: matched on option text
    ],
)
def test_parse_multi_choice_response(response: str, expected: str) -> None:
    parsed = parse_multi_choice_response(response, CHOICES, INDEX2ANS, random.Random(0))
    assert parsed.choice == expected
    assert parsed.random_fallback is False


def test_parse_multi_choice_response_seeded_fallback() -> None:
    # Short and option-free: nothing parses, so the choice comes from the seeded generator.
    parsed = parse_multi_choice_response("no idea", CHOICES, INDEX2ANS, random.Random(42))
    assert parsed.random_fallback is True
    assert parsed.choice == random.Random(42).choice(CHOICES)


def test_parse_open_response_and_eval_open() -> None:
    # "the answer is 3,000": the shortest tail after an indicator is "3,000" (after "is "); the number regexes find
    # "3,000" and, as upstream, also "000"; numbers become floats.
    parsed = parse_open_response("The answer is 3,000.")
    assert set(parsed) == {3000.0, 0.0}
    assert eval_open("3000", parsed)
    assert parse_open_response("x = 5") == [5.0]  # "=" is an indicator in the last sentence
    assert eval_open("cat", parse_open_response("the cat sat"))  # string gold must be a substring
    assert not eval_open("a", ["banana"])  # one-letter gold becomes " a" / "a ": no trivial match
    assert eval_multi_choice(["A", "C"], "C") and not eval_multi_choice("A", "B")


def test_score_mmmu_counts_random_fallbacks() -> None:
    mc = {"question_type": "multiple-choice", "all_choices": CHOICES, "index2ans": INDEX2ANS}
    annotations = {
        "validation_Art_1": {**mc, "answer": "A", "subject": "Art"},
        "validation_Art_2": {**mc, "answer": "B", "subject": "Art"},
        "validation_Math_1": {"question_type": "open", "answer": "5", "subject": "Math"},
    }
    predictions = preds(("validation_Art_1", "(A)"), ("validation_Art_2", "no idea"), ("validation_Math_1", "x = 5"))
    result = score_mmmu(predictions, annotations, seed=42)
    assert result["num_random_fallback"] == 1
    fallback_right = random.Random(42).choice(CHOICES) == "B"  # the only draw made, in prediction order
    assert result["accuracy"] == pytest.approx(100.0 * (2 + fallback_right) / 3)
    assert result["per_subject"]["Math"] == {"accuracy": 100.0, "num": 1}
    assert result["per_subject"]["Art"]["num"] == 2
    assert set(result["per_domain"]) == {"Art and Design", "Science"}


# --------------------------------------------------------------------------------------------------------------------
# MM-Vet
# --------------------------------------------------------------------------------------------------------------------

MMVET = {
    "v1_0": {"question": "What is 6*7?", "answer": "42<OR>forty-two", "capability": ["ocr", "math"]},
    "v1_1": {"question": "What animal is this?", "answer": "dog", "capability": ["rec"]},
}


def test_mmvet_not_scored_without_judge() -> None:
    result = score_mmvet(preds((0, "42"), (1, "cat")), MMVET)
    assert result["status"] == "not scored"
    assert "judge" in result["reason"]
    assert result["num_scored"] == 0
    assert "total" not in result


def test_mmvet_fake_judge_returning_half() -> None:
    prompts: list[str] = []

    def judge(prompt: str) -> str:
        prompts.append(prompt)
        return "0.5"

    # LLaVA's MM-Vet ids 0, 1 map to mm-vet.json's "v1_0", "v1_1".
    result = score_mmvet(preds((0, "42"), (1, "cat")), MMVET, judge=judge)
    assert len(prompts) == 2
    assert result["total"] == pytest.approx(50.0)
    assert result["capabilities"] == {"math": 50.0, "ocr": 50.0, "rec": 50.0}
    assert prompts[0].startswith(MMVET_JUDGE_PROMPT)
    # Official row: question | ground truth with spaced <AND>/<OR> | prediction | (empty: the judge's cell)
    assert prompts[0].endswith("\nWhat is 6*7? | 42 <OR> forty-two | 42 | ")


def test_mmvet_judge_scores_per_capability_and_retries() -> None:
    calls: list[str] = []

    def judge(prompt: str) -> str:
        calls.append(prompt)
        if prompt.endswith("| 42 | "):
            return "1.0"
        if prompt.endswith(MMVET_RETRY_SUFFIX):
            return "0.0 (wrong)"  # first token "0.0" parses
        return "I think it is wrong"  # does not parse -> retried with the "(digit)" suffix

    result = score_mmvet(preds((0, "42"), (1, "cat")), MMVET, judge=judge)
    assert len(calls) == 3  # v1_0 once, v1_1 twice
    assert result["grades"] == {"v1_0": 1.0, "v1_1": 0.0}
    assert result["total"] == pytest.approx(50.0)
    assert result["capabilities"] == {"math": 100.0, "ocr": 100.0, "rec": 0.0}
    assert result["num_unparsed"] == 0


def test_mmvet_unparsable_judge_gives_zero_after_max_attempts() -> None:
    calls = []
    result = score_mmvet(preds((1, "cat")), MMVET, judge=lambda p: calls.append(p) or "maybe", max_attempts=5)
    assert len(calls) == 5
    assert result["grades"] == {"v1_1": 0.0}
    assert result["num_unparsed"] == 1


@pytest.mark.parametrize(("reply", "expected"), [("0.7", 0.7), ("1.0\n", 1.0), ("1.5", None), ("nan", None)])
def test_parse_mmvet_score(reply: str, expected: float | None) -> None:
    assert parse_mmvet_score(reply) == expected


def test_build_mmvet_prompt_retry_suffix() -> None:
    assert build_mmvet_prompt("q", "a", "p", retry=True).endswith("q | a | p | " + MMVET_RETRY_SUFFIX)


# --------------------------------------------------------------------------------------------------------------------
# easy-VQA, matching, registry
# --------------------------------------------------------------------------------------------------------------------


def test_score_easy_vqa() -> None:
    annotations = {"1": {"answer": "circle"}, "2": {"answer": "blue"}, "3": {"answer": "green"}}
    # "Circle." and " Blue " match after lower/strip/trailing-period removal; "red" does not -> 2/3.
    result = score_easy_vqa(preds((1, "Circle."), (2, " Blue "), (3, "red")), annotations)
    assert result["accuracy"] == pytest.approx(200 / 3)


def test_match_predictions_counts_duplicates_and_keeps_first() -> None:
    pairs, missing = match_predictions(preds((1, "first"), (1, "second")), {"1": {}, "2": {}})
    assert [p["text"] for _, p, _ in pairs] == ["first"]
    assert missing == {
        "predictions_without_annotation": 0,
        "annotations_without_prediction": 1,
        "duplicate_predictions": 1,
    }


def test_registry_exact_names() -> None:
    assert list_tasks() == sorted(["vqav2", "textvqa", "gqa", "pope", "mme", "scienceqa", "mmmu", "mmvet", "easy_vqa"])
    assert get_task("gqa").scorer is score_gqa
    for bad in ("GQA", "vqa", "pope_adversarial"):  # no case folding, no substring matching
        with pytest.raises(UnknownTaskError) as info:
            get_task(bad)
        assert "vqav2" in str(info.value) and repr(bad) in str(info.value)
    # Catchable as either KeyError or ValueError.
    with pytest.raises(KeyError):
        get_task("nope")
    with pytest.raises(ValueError):
        get_task("nope")
