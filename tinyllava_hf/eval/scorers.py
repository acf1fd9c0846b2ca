"""Benchmark scorers, reproducing each benchmark's official (or LLaVA's reference) scoring rules.

Every scorer takes ``predictions`` (dicts with ``question_id`` and ``text``, as returned by
:func:`~tinyllava_hf.eval.loaders.load_predictions`) and ``annotations`` (the ``dict[str, dict]`` returned by the
matching loader) and returns a dict of metrics. Rates are percentages in [0, 100], as the benchmarks report them.

Two keys of that dict are bookkeeping rather than metrics (see :data:`BOOKKEEPING_KEYS`):

* ``num_scored``: how many questions had both a prediction and an annotation (only these are scored);
* ``missing``: ``predictions_without_annotation`` (ids not in the annotations), ``annotations_without_prediction``
  (questions never answered) and ``duplicate_predictions`` (a second prediction for an already answered question;
  the first one is kept).

Generated text is stripped of surrounding whitespace before scoring, as LLaVA's inference scripts do before writing
their answer files, so stripped and unstripped predictions score the same.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any, NamedTuple

from .loaders import mme_key
from .vqa_normalize import evalai_normalize, normalize_answer, process_punctuation

Prediction = dict[str, Any]
Annotations = dict[str, dict[str, Any]]
Judge = Callable[[str], str]
Scorer = Callable[..., dict[str, Any]]
KeyResolver = Callable[[Prediction], str | None]

BOOKKEEPING_KEYS: tuple[str, ...] = ("num_scored", "missing")


# --------------------------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------------------------


def _pct(numerator: float, denominator: float) -> float:
    return 100.0 * numerator / denominator if denominator else 0.0


def _text(prediction: Prediction) -> str:
    return str(prediction["text"]).strip()


def _default_key(prediction: Prediction) -> str:
    return str(prediction["question_id"])


def match_predictions(
    predictions: list[Prediction], annotations: Annotations, resolve: KeyResolver = _default_key
) -> tuple[list[tuple[str, Prediction, dict[str, Any]]], dict[str, int]]:
    """Pair predictions with annotations by key; return the pairs (prediction order) and the ``missing`` counts.

    ``resolve`` maps a prediction to its annotation key (``str(question_id)`` by default), or ``None`` when it
    cannot be matched.
    """
    matched: dict[str, Prediction] = {}
    unmatched = duplicates = 0
    for prediction in predictions:
        key = resolve(prediction)
        if key is None or key not in annotations:
            unmatched += 1
        elif key in matched:
            duplicates += 1
        else:
            matched[key] = prediction
    pairs = [(key, prediction, annotations[key]) for key, prediction in matched.items()]
    missing = {
        "predictions_without_annotation": unmatched,
        "annotations_without_prediction": len(annotations) - len(matched),
        "duplicate_predictions": duplicates,
    }
    return pairs, missing


def _with_bookkeeping(metrics: dict[str, Any], num_scored: int, missing: dict[str, int]) -> dict[str, Any]:
    return {**metrics, "num_scored": num_scored, "missing": missing}


# --------------------------------------------------------------------------------------------------------------------
# VQAv2 and TextVQA: soft accuracy against 10 human answers
# --------------------------------------------------------------------------------------------------------------------


def vqa_soft_accuracy(prediction: str, gt_answers: list[str]) -> float:
    """Average over the leave-one-out subsets of the human answers of ``min(1, #matches / 3)``, in [0, 1].

    Both sides must already be normalised. With 10 answers of which k equal the prediction, the k subsets that drop
    a matching answer see k-1 matches and the other 10-k see k (e.g. k=2 gives (2*1/3 + 8*2/3) / 10 = 0.6).
    """
    total_matches = sum(answer == prediction for answer in gt_answers)
    accuracies = [min(1.0, (total_matches - (answer == prediction)) / 3) for answer in gt_answers]
    return sum(accuracies) / len(accuracies)


def vqav2_accuracy(prediction: str, gt_answers: list[str]) -> float:
    """Per-question VQAv2 accuracy in [0, 1], exactly as the official ``vqaEval.py`` computes it.

    The prediction gets the full normalisation. The human answers, which the VQA team already normalised when
    publishing them, only get the punctuation step, and only when they disagree with each other; that is the
    official behaviour, kept so local numbers match the evaluation server.
    """
    answer = normalize_answer(prediction)
    if len(set(gt_answers)) > 1:
        gt_answers = [process_punctuation(gt) for gt in gt_answers]
    return vqa_soft_accuracy(answer, gt_answers)


def textvqa_accuracy(prediction: str, gt_answers: list[str]) -> float:
    """Per-question TextVQA accuracy in [0, 1] (the m4c ``TextVQAAccuracyEvaluator`` LLaVA uses).

    Prediction and every human answer go through the EvalAI answer processor, then the leave-one-out soft score.
    """
    return vqa_soft_accuracy(evalai_normalize(prediction), [evalai_normalize(gt) for gt in gt_answers])


def score_vqav2(predictions: list[Prediction], annotations: Annotations) -> dict[str, Any]:
    """VQAv2 soft accuracy overall and per ``answer_type`` (yes/no, number, other) when the annotations have it."""
    pairs, missing = match_predictions(predictions, annotations)
    scores = [vqav2_accuracy(_text(pred), ann["answers"]) for _, pred, ann in pairs]
    by_type: dict[str, list[float]] = defaultdict(list)
    for score, (_, _, ann) in zip(scores, pairs):
        if ann.get("answer_type"):
            by_type[ann["answer_type"]].append(score)
    metrics: dict[str, Any] = {"accuracy": _pct(sum(scores), len(scores))}
    if by_type:
        metrics["per_answer_type"] = {kind: _pct(sum(s), len(s)) for kind, s in sorted(by_type.items())}
    return _with_bookkeeping(metrics, len(pairs), missing)


def _textvqa_prompt_question(prompt: str) -> str:
    """The question inside a LLaVA TextVQA prompt (LLaVA's ``prompt_processor``, lenient on unknown layouts)."""
    if prompt.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        if match:
            return match.group(1)
    lines = prompt.split("\n")
    if "Reference OCR token: " in prompt and len(lines) == 3:
        return lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    # LLaVA's usual layout is "question\nAnswer the question using a single word or phrase."; LLaVA asserts on any
    # other layout, we fall back to the first line.
    return lines[0]


def score_textvqa(predictions: list[Prediction], annotations: Annotations) -> dict[str, Any]:
    """TextVQA soft accuracy.

    Predictions match by TextVQA ``question_id``; failing that, as LLaVA's ``eval_textvqa`` does, by the pair
    (``question_id`` taken as the image id, question extracted from the prediction's ``prompt``), case-insensitive.
    """
    by_image_question = {
        (str(ann["image_id"]), ann["question"].lower()): key
        for key, ann in annotations.items()
        if ann.get("image_id") is not None and isinstance(ann.get("question"), str)
    }

    def resolve(prediction: Prediction) -> str | None:
        key = str(prediction["question_id"])
        if key in annotations:
            return key
        prompt = prediction.get("prompt")
        if not isinstance(prompt, str):
            return None
        return by_image_question.get((key, _textvqa_prompt_question(prompt).lower()))

    pairs, missing = match_predictions(predictions, annotations, resolve)
    scores = [textvqa_accuracy(_text(pred), ann["answers"]) for _, pred, ann in pairs]
    return _with_bookkeeping({"accuracy": _pct(sum(scores), len(scores))}, len(pairs), missing)


# --------------------------------------------------------------------------------------------------------------------
# GQA
# --------------------------------------------------------------------------------------------------------------------


def gqa_normalize(text: str) -> str:
    """LLaVA's ``convert_gqa_for_eval`` treatment of a prediction: trailing periods removed, lower-cased."""
    return text.strip().rstrip(".").lower()


def score_gqa(predictions: list[Prediction], annotations: Annotations) -> dict[str, Any]:
    """GQA exact-match accuracy (official ``eval.py``: ``prediction == answer``), plus binary/open split."""
    pairs, missing = match_predictions(predictions, annotations)
    correct = [gqa_normalize(_text(pred)) == ann["answer"] for _, pred, ann in pairs]
    metrics: dict[str, Any] = {"accuracy": _pct(sum(correct), len(correct))}
    # Official answer types: "open" for structural type "query", "binary" for the rest (verify, logical, ...).
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for ok, (_, _, ann) in zip(correct, pairs):
        if ann.get("structural"):
            by_kind["open" if ann["structural"] == "query" else "binary"].append(ok)
    for kind, oks in sorted(by_kind.items()):
        metrics[f"{kind}_accuracy"] = _pct(sum(oks), len(oks))
    return _with_bookkeeping(metrics, len(pairs), missing)


# --------------------------------------------------------------------------------------------------------------------
# POPE
# --------------------------------------------------------------------------------------------------------------------


def pope_yes_no(text: str) -> str:
    """LLaVA ``eval_pope`` parsing: keep the first sentence, drop commas, and answer "no" if any word is exactly
    ``No``, ``not`` or ``no``; everything else counts as "yes" (so ``"NO"`` or ``"Nope"`` count as yes)."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_metrics(labels: list[str], answers: list[str]) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 and yes-ratio (percentages) with "yes" as the positive class.

    LLaVA divides by zero when there is no positive prediction or label; here such a ratio is 0.
    """
    tp = sum(label == "yes" and answer == "yes" for label, answer in zip(labels, answers))
    fp = sum(label == "no" and answer == "yes" for label, answer in zip(labels, answers))
    tn = sum(label == "no" and answer == "no" for label, answer in zip(labels, answers))
    fn = sum(label == "yes" and answer == "no" for label, answer in zip(labels, answers))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": _pct(tp + tn, len(labels)),
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": _pct(answers.count("yes"), len(answers)),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "num": len(labels),
    }


def score_pope(predictions: list[Prediction], annotations: Annotations) -> dict[str, Any]:
    """POPE metrics per split (adversarial / popular / random) and their mean over the splits present."""
    pairs, missing = match_predictions(predictions, annotations)
    by_split: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for _, pred, ann in pairs:
        labels, answers = by_split[ann["split"]]
        labels.append(ann["label"])
        answers.append(pope_yes_no(_text(pred)))
    splits = {split: pope_metrics(*by_split[split]) for split in sorted(by_split)}
    metrics: dict[str, Any] = {}
    # Papers (LLaVA-1.5, TinyLLaVA) report POPE as the average over the three splits.
    for name in ("f1", "accuracy", "precision", "recall", "yes_ratio"):
        metrics[name] = sum(s[name] for s in splits.values()) / len(splits) if splits else 0.0
    metrics["splits"] = splits
    return _with_bookkeeping(metrics, len(pairs), missing)


# --------------------------------------------------------------------------------------------------------------------
# MME
# --------------------------------------------------------------------------------------------------------------------

MME_PERCEPTION: tuple[str, ...] = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION: tuple[str, ...] = (
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
)


def mme_yes_no(text: str) -> str:
    """Official MME ``calculation.py`` parsing: lower-case; exactly "yes"/"no", else look for "yes" then "no" in the
    first 4 characters; otherwise "other" (always wrong)."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def score_mme(predictions: list[Prediction], annotations: Annotations) -> dict[str, Any]:
    """MME: per subtask ``acc`` (questions) and ``acc_plus`` (images with both questions right), both x100, and the
    subtask ``score = acc + acc_plus``; ``perception`` sums the 10 perception subtasks, ``cognition`` the 4 others.

    Predictions match on LLaVA's ``question_id`` (``"<subtask>/<image>"``) plus the question in ``prompt`` (both
    questions of an image share the id). ``acc_plus`` only counts images whose questions were all answered.
    """

    def resolve(prediction: Prediction) -> str | None:
        qid = str(prediction["question_id"])
        if qid in annotations:
            return qid
        question = prediction.get("prompt", prediction.get("question"))
        if not isinstance(question, str):
            raise ValueError(
                f"MME prediction {qid!r} has no 'prompt': the question text is needed to tell apart the two "
                "questions of an image (LLaVA's answer files include it)"
            )
        return mme_key(qid.split("/")[0], qid, question)

    pairs, missing = match_predictions(predictions, annotations, resolve)
    questions_per_image = Counter((ann["category"], ann["image"]) for ann in annotations.values())
    results: dict[str, list[bool]] = defaultdict(list)
    per_image: dict[tuple[str, str], list[bool]] = defaultdict(list)
    other: Counter[str] = Counter()
    for _, pred, ann in pairs:
        answer = mme_yes_no(_text(pred))
        other[ann["category"]] += answer == "other"
        ok = answer == ann["answer"]
        results[ann["category"]].append(ok)
        per_image[(ann["category"], ann["image"])].append(ok)

    subtasks: dict[str, dict[str, Any]] = {}
    for category in sorted(results):
        complete = [
            oks
            for (cat, image), oks in per_image.items()
            if cat == category and len(oks) == questions_per_image[(cat, image)]
        ]
        acc = _pct(sum(results[category]), len(results[category]))
        acc_plus = _pct(sum(all(oks) for oks in complete), len(complete))
        subtasks[category] = {
            "acc": acc,
            "acc_plus": acc_plus,
            "score": acc + acc_plus,
            "num_questions": len(results[category]),
            "num_images": len(complete),
            "other_answers": other[category],
        }
    perception = sum(subtasks[name]["score"] for name in MME_PERCEPTION if name in subtasks)
    cognition = sum(subtasks[name]["score"] for name in MME_COGNITION if name in subtasks)
    metrics = {
        "perception": perception,
        "cognition": cognition,
        "total": perception + cognition,
        # Totals over fewer subtasks are not comparable with published numbers; list what is absent.
        "missing_subtasks": [name for name in MME_PERCEPTION + MME_COGNITION if name not in subtasks],
        "subtasks": subtasks,
    }
    return _with_bookkeeping(metrics, len(pairs), missing)


# --------------------------------------------------------------------------------------------------------------------
# ScienceQA
# --------------------------------------------------------------------------------------------------------------------

SCIENCEQA_OPTIONS: tuple[str, ...] = ("A", "B", "C", "D", "E")
_SCIENCEQA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse_scienceqa_answer(text: str) -> str:
    """LLaVA ``eval_science_qa`` letter parser: returns an option letter or ``"FAILED"``.

    Accepted: exactly a letter (``"A"``); a letter, period and space at the start (``"A. cat"``); or exactly one
    ``"The answer is X<any char>"`` (``"The answer is A."``). A bare ``"A."`` does *not* parse under LLaVA's rule.
    """
    if text in SCIENCEQA_OPTIONS:
        return text
    if len(text) >= 3 and text[0] in SCIENCEQA_OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _SCIENCEQA_ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def score_scienceqa(predictions: list[Prediction], annotations: Annotations) -> dict[str, Any]:
    """ScienceQA accuracy overall and on questions with an image (``img_accuracy``, the usual "SQA-IMG").

    A letter beyond the problem's number of choices, or an unparsed answer, is wrong (LLaVA's index -1).
    """
    pairs, missing = match_predictions(predictions, annotations)
    correct: list[bool] = []
    image_correct: list[bool] = []
    failed = 0
    for _, pred, ann in pairs:
        letter = parse_scienceqa_answer(_text(pred))
        failed += letter == "FAILED"
        valid = SCIENCEQA_OPTIONS[: len(ann["choices"])]
        index = valid.index(letter) if letter in valid else -1
        correct.append(index == ann["answer"])
        if ann["has_image"]:
            image_correct.append(index == ann["answer"])
    metrics = {
        "accuracy": _pct(sum(correct), len(correct)),
        "img_accuracy": _pct(sum(image_correct), len(image_correct)),
        "num_img": len(image_correct),
        "num_unparsed": failed,
    }
    return _with_bookkeeping(metrics, len(pairs), missing)


# --------------------------------------------------------------------------------------------------------------------
# MMMU: the official parsers (MMMU eval_utils)
# --------------------------------------------------------------------------------------------------------------------

MMMU_DOMAINS: dict[str, tuple[str, ...]] = {
    "Art and Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health and Medicine": (
        "Basic_Medical_Science",
        "Clinical_Medicine",
        "Diagnostics_and_Laboratory_Medicine",
        "Pharmacy",
        "Public_Health",
    ),
    "Humanities and Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech and Engineering": (
        "Agriculture",
        "Architecture_and_Engineering",
        "Computer_Science",
        "Electronics",
        "Energy_and_Power",
        "Materials",
        "Mechanical_Engineering",
    ),
}


class MultiChoiceParse(NamedTuple):
    """Result of :func:`parse_multi_choice_response`: the chosen letter and whether it was a random fallback."""

    choice: str
    random_fallback: bool


def parse_multi_choice_response(
    response: str, all_choices: list[str], index2ans: dict[str, str], rng: random.Random | None = None
) -> MultiChoiceParse:
    """Official MMMU multiple-choice parser.

    In order: letters in brackets ``(A)``; letters between spaces `` A ``; for responses longer than 5 words, the
    option texts. Several candidates: the one appearing last wins. None: a random choice from ``rng`` (the official
    script seeds Python's ``random`` with 42), flagged as ``random_fallback``.
    """
    for char in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(char)
    response = f" {response} "  # spaces so " A " also matches at either end

    candidates: list[str] = []
    bracketed = False
    by_content = False
    for choice in all_choices:
        if f"({choice})" in response:
            candidates.append(choice)
            bracketed = True
    if not candidates:
        candidates = [choice for choice in all_choices if f" {choice} " in response]
    if not candidates and len(response.split()) > 5:
        for index, answer in index2ans.items():
            if answer.lower() in response.lower():
                candidates.append(index)
                by_content = True

    if not candidates:
        return MultiChoiceParse((rng or random.Random(42)).choice(all_choices), True)
    if len(candidates) == 1:
        return MultiChoiceParse(candidates[0], False)
    if by_content:
        positions = [response.lower().rfind(index2ans[c].lower()) for c in candidates]
    elif bracketed:
        positions = [response.rfind(f"({c})") for c in candidates]
    else:
        positions = [response.rfind(f" {c} ") for c in candidates]
    # np.argmax semantics: the first of equal maxima.
    best = max(range(len(candidates)), key=lambda i: (positions[i], -i))
    return MultiChoiceParse(candidates[best], False)


def check_is_number(text: str) -> bool:
    """True if ``text`` parses as a float once commas are removed (official MMMU helper)."""
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def normalize_str(text: str) -> list[str | float]:
    """Official MMMU normalisation: numbers become floats rounded to 2 decimals; other strings are lower-cased,
    and a single character becomes ``[" x", "x "]`` to avoid trivial substring matches."""
    text = text.strip()
    if check_is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    if len(text) == 1:
        return [" " + text, text + " "]
    return [text]


_NUMBER_WITH_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUMBER_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUMBER_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")


def extract_numbers(text: str) -> list[str]:
    """All numbers in ``text``: with thousands commas, in scientific notation, then plain (official MMMU regexes)."""
    return _NUMBER_WITH_COMMAS.findall(text) + _NUMBER_SCIENTIFIC.findall(text) + _NUMBER_SIMPLE.findall(text)


_KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL_TAILS = (":", ",", ".", "!", "?", ";", "'")


def parse_open_response(response: str) -> list[str | float]:
    """Official MMMU open-question parser: candidate answers (strings and numbers, normalised, deduplicated).

    The response is split into sentences; in each, the shortest text after an indicator ("is ", "so ", "answer ",
    ... and "=" in the last sentence) is a key response; numbers found in the key responses are added.
    """
    text = response.strip().strip(".").lower()
    # Note: the text is already lower-case, so the "(?=[A-Z])" sentence split only fires on newlines, as upstream.
    sentences = re.split(r"\.\s(?=[A-Z])|\n", text)
    key_responses: list[str] = []
    indicators = list(_KEY_INDICATORS)
    for index, sentence in enumerate(sentences):
        if index == len(sentences) - 1:
            indicators.append("=")  # the last sentence may be a bare equation
        shortest: str | None = None
        for indicator in indicators:
            if indicator in sentence:
                tail = sentence.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL_TAILS:
            key_responses.append(shortest)
    if not key_responses:
        key_responses = [text]

    candidates: list[str] = list(key_responses)
    for key_response in key_responses:
        candidates.extend(extract_numbers(key_response))
    normalized: list[str | float] = []
    for candidate in candidates:
        normalized.extend(normalize_str(candidate))
    return list(dict.fromkeys(normalized))  # deduplicate, keeping order for readable debugging


def eval_multi_choice(gold: str | list[str], prediction: str) -> bool:
    """Official MMMU multiple-choice check: exact letter match (any of several gold letters)."""
    return prediction in gold if isinstance(gold, list) else prediction == gold


def eval_open(gold: str | list[str], predictions: list[str | float]) -> bool:
    """Official MMMU open check: a string gold answer must be a substring of a string prediction; numbers must be
    equal after rounding to 2 decimals."""
    golds: list[str | float] = []
    for answer in gold if isinstance(gold, list) else [gold]:
        golds.extend(normalize_str(str(answer)))
    for prediction in predictions:
        if isinstance(prediction, str):
            if any(isinstance(g, str) and g in prediction for g in golds):
                return True
        elif prediction in golds:
            return True
    return False


def score_mmmu(predictions: list[Prediction], annotations: Annotations, seed: int = 42) -> dict[str, Any]:
    """MMMU accuracy overall, per subject and per domain, with the official parsers.

    Multiple-choice responses that name no option get a random option from ``random.Random(seed)`` (seed 42 like
    the official script), drawn in prediction order; ``num_random_fallback`` counts them.
    """
    rng = random.Random(seed)
    pairs, missing = match_predictions(predictions, annotations)
    by_subject: dict[str, list[bool]] = defaultdict(list)
    fallbacks = 0
    for _, pred, ann in pairs:
        if ann["question_type"] == "multiple-choice":
            parsed = parse_multi_choice_response(_text(pred), ann["all_choices"], ann["index2ans"], rng)
            fallbacks += parsed.random_fallback
            ok = eval_multi_choice(ann["answer"], parsed.choice)
        else:
            ok = eval_open(ann["answer"], parse_open_response(_text(pred)))
        by_subject[ann["subject"]].append(ok)

    all_results = [ok for oks in by_subject.values() for ok in oks]
    per_domain = {}
    for domain, subjects in MMMU_DOMAINS.items():
        oks = [ok for subject in subjects for ok in by_subject.get(subject, [])]
        if oks:
            per_domain[domain] = {"accuracy": _pct(sum(oks), len(oks)), "num": len(oks)}
    metrics = {
        "accuracy": _pct(sum(all_results), len(all_results)),
        "num_random_fallback": fallbacks,
        "per_subject": {
            subject: {"accuracy": _pct(sum(oks), len(oks)), "num": len(oks)}
            for subject, oks in sorted(by_subject.items())
        },
        "per_domain": per_domain,
    }
    return _with_bookkeeping(metrics, len(pairs), missing)


# --------------------------------------------------------------------------------------------------------------------
# MM-Vet: LLM-judged
# --------------------------------------------------------------------------------------------------------------------

# The official MM-Vet few-shot grading prompt (mm-vet_evaluator.py); the judge must see it verbatim for scores to be
# comparable with published ones.
MMVET_JUDGE_PROMPT = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
"""  # noqa: E501

# Appended by the official evaluator when the judge's first reply is not a score.
MMVET_RETRY_SUFFIX = "\nPredict the correctness of the answer (digit): "


def build_mmvet_prompt(question: str, answer: str, prediction: str, retry: bool = False) -> str:
    """The official MM-Vet grading prompt for one sample (``retry`` adds the official "(digit)" nudge)."""
    ground_truth = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    prompt = MMVET_JUDGE_PROMPT + "\n" + " | ".join([question, ground_truth, prediction, ""])
    return prompt + MMVET_RETRY_SUFFIX if retry else prompt


def parse_mmvet_score(reply: str) -> float | None:
    """Official parsing of a judge reply: its first space-separated token as a float in [0, 1], else ``None``."""
    token = reply.split(" ")[0].strip()
    try:
        score = float(token)
    except ValueError:
        return None
    return score if math.isfinite(score) and 0.0 <= score <= 1.0 else None


def _mmvet_key(annotations: Annotations) -> KeyResolver:
    def resolve(prediction: Prediction) -> str | None:
        key = str(prediction["question_id"])
        # LLaVA's MM-Vet question file numbers questions 0..217; mm-vet.json calls them "v1_0".."v1_217".
        return key if key in annotations else f"v1_{key}"

    return resolve


def score_mmvet(
    predictions: list[Prediction], annotations: Annotations, judge: Judge | None = None, max_attempts: int = 5
) -> dict[str, Any]:
    """MM-Vet total and per-capability scores (0-100) from an LLM judge.

    ``judge`` is any callable ``prompt -> reply`` (e.g. wrapping an OpenAI-compatible chat client at temperature 0,
    max 3 tokens, as officially). A reply that does not parse is retried with the official "(digit)" suffix, up to
    ``max_attempts`` replies in all, then scored 0 and counted in ``num_unparsed`` (as upstream). Without a judge
    nothing is called and the result says ``"status": "not scored"``.
    """
    pairs, missing = match_predictions(predictions, annotations, _mmvet_key(annotations))
    if judge is None:
        metrics = {
            "status": "not scored",
            "reason": "MM-Vet is graded by an LLM judge and no judge was given (pass judge=callable(prompt) -> str)",
        }
        return _with_bookkeeping(metrics, 0, missing)

    grades: dict[str, float] = {}
    unparsed = 0
    for key, pred, ann in pairs:
        score = None
        for attempt in range(max_attempts):
            reply = judge(build_mmvet_prompt(ann["question"], ann["answer"], _text(pred), retry=attempt > 0))
            score = parse_mmvet_score(reply)
            if score is not None:
                break
        if score is None:
            unparsed += 1
            score = 0.0
        grades[key] = score

    by_capability: dict[str, list[float]] = defaultdict(list)
    for key, _, ann in pairs:
        for capability in set(ann["capability"]):
            by_capability[capability].append(grades[key])
    metrics = {
        "total": _pct(sum(grades.values()), len(grades)),
        "capabilities": {cap: _pct(sum(s), len(s)) for cap, s in sorted(by_capability.items())},
        "num_unparsed": unparsed,
        "grades": grades,
    }
    return _with_bookkeeping(metrics, len(pairs), missing)


# --------------------------------------------------------------------------------------------------------------------
# easy-VQA
# --------------------------------------------------------------------------------------------------------------------


def easy_vqa_normalize(text: str) -> str:
    """Case-insensitive, stripped, trailing period(s) removed."""
    return text.strip().lower().rstrip(".").strip()


def score_easy_vqa(predictions: list[Prediction], annotations: Annotations) -> dict[str, Any]:
    """easy-VQA exact-match accuracy after :func:`easy_vqa_normalize` on both sides."""
    pairs, missing = match_predictions(predictions, annotations)
    correct = [easy_vqa_normalize(_text(pred)) == easy_vqa_normalize(ann["answer"]) for _, pred, ann in pairs]
    return _with_bookkeeping({"accuracy": _pct(sum(correct), len(correct))}, len(pairs), missing)
