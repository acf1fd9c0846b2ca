"""VQA answer normalisation, following the official VQA evaluation rules.

Two processors live here:

* :func:`normalize_answer` is the official VQA evaluator's treatment of a predicted answer (``vqaEval.py`` of the
  VQA API): newlines/tabs to spaces, strip, punctuation handling, then number words to digits, articles dropped and
  contractions restored.
* :func:`evalai_normalize` is the EvalAI answer processor used by the TextVQA evaluator (the ``m4c_evaluator`` that
  LLaVA ships); it first lower-cases, deletes ``,`` and ``?`` and splits ``'s``, then applies the same rules.

The tables below are facts taken from the official script; the code is written for this project.
"""

from __future__ import annotations

import re

# Official contraction table. Keys are the apostrophe-less spellings annotators typed. It is kept verbatim, including
# its oddities: entries with capitals ("Im", "Ive", ...) can never fire because words are lower-cased first, and
# "somebody'd" maps *to* "somebodyd". Changing them would change scores relative to the official evaluator.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}

# The official "manual map": number words up to ten become digits ("none" counts as zero).
NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# Characters the official evaluator removes or turns into spaces. Periods are handled separately (decimal rule);
# apostrophes and colons are not in the list, so "don't" and "3:00" stay intact.
PUNCTUATION: tuple[str, ...] = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)

# A comma between two digits ("1,000") marks a number; when present, every punctuation mark is deleted instead of
# being replaced by a space, so "1,000" becomes "1000" rather than "1 000".
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")

# A period is dropped unless a digit follows it, so "2.5" keeps its decimal point while "dogs." and "2." lose theirs.
# The official pattern is written "(?!<=\d)(\.)(?!\d)"; its first group is a lookahead (not a lookbehind) that is
# always true at a ".", so the effective rule is exactly "a period not followed by a digit".
_PERIOD_NOT_DECIMAL = re.compile(r"\.(?!\d)")

# The official code calls ``pattern.sub("", text, re.UNICODE)``: the flag lands in the ``count`` argument, so at most
# re.UNICODE (== 32) periods are removed. We keep that cap so long answers score exactly as they do officially.
_PERIOD_SUB_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """Apply the official VQA punctuation rule to ``text``.

    Each punctuation mark is deleted when it touches a space (``"red, blue"`` -> ``"red blue"``) or when the text holds
    a comma between digits (``"1,000"`` -> ``"1000"``); otherwise it is replaced by a space (``"red,blue"`` ->
    ``"red blue"``). Finally periods not followed by a digit are removed.
    """
    has_digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        # The test looks at the *input* text, not the partially processed one, exactly like the official loop.
        if f"{mark} " in text or f" {mark}" in text or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_DECIMAL.sub("", out, count=_PERIOD_SUB_COUNT)


def process_digit_article(text: str) -> str:
    """Lower-case, map number words to digits, drop articles and restore contractions (official VQA rule)."""
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """Normalise an answer the way the official VQA evaluator normalises a prediction.

    Examples: ``"Two dogs."`` -> ``"2 dogs"``, ``"the cat"`` -> ``"cat"``, ``"dont"`` -> ``"don't"``,
    ``"1,000"`` -> ``"1000"``, ``"2.5"`` -> ``"2.5"``.
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def evalai_normalize(text: str) -> str:
    """Normalise an answer like the EvalAI answer processor used by the TextVQA (m4c) evaluator.

    Differs from :func:`normalize_answer` only in its first step: the text is lower-cased, every ``,`` and ``?`` is
    deleted and ``'s`` is split off as a separate token (``"man's"`` -> ``"man 's"``).
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))
