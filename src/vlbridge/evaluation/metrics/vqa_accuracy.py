"""VQA accuracy exactly as the official VQA v2 evaluation script (GT-Vision-Lab/VQA, vqaEval.py).

`vqa_accuracy(items)` scores items `{"id", "pred", "answers": [10 human answers],
"answer_type"?, "question_type"?}` the way the current official script does:

1. in every answer and in the prediction, "\\n" and "\\t" become spaces, then `strip()`;
2. only if the ground-truth answers are not all identical, the answers *and* the prediction
   are normalised: `process_punctuation` then `process_digit_article` (when all answers are
   identical, the prediction must equal them character for character);
3. accuracy of an item = mean over the 10 leave-one-annotator-out subsets of
   min(1, #matching answers among the other 9 / 3);
4. overall accuracy = mean over items; `accuracy_percent` = round(100 * mean, 2), the figure
   the official tool prints; the same per answer type (and per question type when given).

Quirks kept on purpose, because they define the official numbers: the period regex
`(?!<=\\d)(\\.)(?!\\d)` is a (mistyped) look-ahead, so every "." not followed by a digit is
deleted; `re.UNICODE` is passed as the *count* argument of `sub`, so at most 32 periods go;
a punctuation mark is deleted (not replaced by a space) when it touches a space anywhere in
the text or when the text contains digit,digit; contractions are mapped after lower-casing,
so the capitalised keys ("Im", "Ive") never fire.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from vlbridge.errors import BadInputError

log = logging.getLogger(__name__)

# The 21 punctuation symbols of the official script, in its order.
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")  # a comma between digits: then punctuation is deleted, not spaced
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # a period not followed by a digit
PERIOD_STRIP_COUNT = re.UNICODE  # the official script passes re.UNICODE (= 32) as sub()'s count
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = {"a", "an", "the"}
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}


def clean_whitespace(answer: str) -> str:
    """Step 1 of the official script: newlines and tabs become spaces, then strip."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """Official processPunctuation: delete or space out the 21 symbols, then drop periods."""
    out = text
    delete_all = COMMA_STRIP.search(text) is not None
    for mark in PUNCTUATION:
        if delete_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, count=PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """Official processDigitArticle: lower-case, number words -> digits, drop articles, fix contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(answer: str) -> str:
    """The full normalisation applied when the ground-truth answers disagree."""
    return process_digit_article(process_punctuation(answer))


def item_accuracy(prediction: str, answers: list[str]) -> float:
    """Accuracy of one prediction against its human answers, as the official loop computes it."""
    answers = [clean_whitespace(a) for a in answers]
    prediction = clean_whitespace(prediction)
    if len(set(answers)) > 1:
        answers = [normalize_answer(a) for a in answers]
        prediction = normalize_answer(prediction)
    per_subset = []
    for left_out in range(len(answers)):
        matches = sum(1 for j, other in enumerate(answers) if j != left_out and other == prediction)
        per_subset.append(min(1.0, matches / 3))
    return sum(per_subset) / len(per_subset)


def vqa_accuracy(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Official VQA accuracy of `items` (see module docstring); validates the items first."""
    _check_items(items)
    per_item = [{"id": item["id"], "acc": item_accuracy(item["pred"], item["answers"])} for item in items]
    scores = [entry["acc"] for entry in per_item]
    result: dict[str, Any] = {**_summary(scores), "per_item": per_item}
    for key, out_key in (("answer_type", "by_answer_type"), ("question_type", "by_question_type")):
        groups: dict[str, list[float]] = {}
        for item, score in zip(items, scores):
            if item.get(key) is not None:
                groups.setdefault(str(item[key]), []).append(score)
        if groups:
            result[out_key] = {name: _summary(group) for name, group in groups.items()}
    return result


def _summary(scores: list[float]) -> dict[str, Any]:
    """Mean accuracy, the official rounded percentage, and the count."""
    return {
        "accuracy": sum(scores) / len(scores),
        "accuracy_percent": round(100 * float(sum(scores)) / len(scores), 2),
        "count": len(scores),
    }


def _check_items(items: Any) -> None:
    """One clear BadInputError for anything that is not a non-empty list of well-formed items."""
    if not isinstance(items, list) or not items:
        raise BadInputError(f"expected a non-empty list of VQA items, got {type(items).__name__}")
    seen: set = set()
    odd_counts = 0
    for position, item in enumerate(items):
        where = f"VQA item {position}"
        if not isinstance(item, dict):
            raise BadInputError(f"{where} must be an object with id/pred/answers, got {type(item).__name__}")
        for key in ("id", "pred", "answers"):
            if key not in item:
                raise BadInputError(f"{where} has no {key!r} field (expected id, pred, answers)")
        if not isinstance(item["pred"], str):
            raise BadInputError(f"{where} (id {item['id']!r}): 'pred' must be a string, got {type(item['pred']).__name__}")
        answers = item["answers"]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise BadInputError(f"{where} (id {item['id']!r}): 'answers' must be a non-empty list of strings, got {answers!r:.80}")
        if not isinstance(item["id"], (str, int)) or isinstance(item["id"], bool):
            raise BadInputError(f"{where}: 'id' must be a string or an integer, got {item['id']!r:.40}")
        if item["id"] in seen:
            raise BadInputError(f"{where}: duplicate id {item['id']!r}")
        seen.add(item["id"])
        odd_counts += len(answers) != 10
    if odd_counts:
        log.warning("%d of %d VQA items do not have 10 answers; the VQA v2 metric assumes 10", odd_counts, len(items))
