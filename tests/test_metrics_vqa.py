"""VQA accuracy equals the official VQA v2 evaluation (GT-Vision-Lab/VQA vqaEval.py).

Hand-worked cases cover each normalisation rule and the leave-one-out averaging; hypothesis
compares `vqa_accuracy` with `OfficialOracle`, a direct transcription of the official loop
(dict answers with answer_id, in-place normalisation) written here independently of src/.
"""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlbridge.errors import BadInputError
from vlbridge.evaluation.metrics.vqa_accuracy import (
    CONTRACTIONS,
    PUNCTUATION,
    item_accuracy,
    process_digit_article,
    process_punctuation,
    vqa_accuracy,
)


class OfficialOracle:
    """Transcription of VQAEval.evaluate / processPunctuation / processDigitArticle (current version)."""

    contractions = CONTRACTIONS  # the data table (checked against the official entries below)
    manualMap = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
    articles = ["a", "an", "the"]
    periodStrip = re.compile(r"(?!<=\d)(\.)(?!\d)")
    commaStrip = re.compile(r"(\d)(\,)(\d)")
    punct = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]

    def processPunctuation(self, inText):
        outText = inText
        for p in self.punct:
            if (p + " " in inText or " " + p in inText) or (re.search(self.commaStrip, inText) != None):  # noqa: E711
                outText = outText.replace(p, "")
            else:
                outText = outText.replace(p, " ")
        outText = self.periodStrip.sub("", outText, re.UNICODE)
        return outText

    def processDigitArticle(self, inText):
        outText = []
        tempText = inText.lower().split()
        for word in tempText:
            word = self.manualMap.setdefault(word, word)
            if word not in self.articles:
                outText.append(word)
        for wordId, word in enumerate(outText):
            if word in self.contractions:
                outText[wordId] = self.contractions[word]
        return " ".join(outText)

    def accuracy(self, prediction, answers):
        gts = {"answers": [{"answer": a, "answer_id": i + 1, "answer_confidence": "yes"} for i, a in enumerate(answers)]}
        for ansDic in gts["answers"]:
            ansDic["answer"] = ansDic["answer"].replace("\n", " ")
            ansDic["answer"] = ansDic["answer"].replace("\t", " ")
            ansDic["answer"] = ansDic["answer"].strip()
        resAns = prediction
        resAns = resAns.replace("\n", " ")
        resAns = resAns.replace("\t", " ")
        resAns = resAns.strip()
        gtAcc = []
        gtAnswers = [ans["answer"] for ans in gts["answers"]]
        if len(set(gtAnswers)) > 1:
            for ansDic in gts["answers"]:
                ansDic["answer"] = self.processPunctuation(ansDic["answer"])
                ansDic["answer"] = self.processDigitArticle(ansDic["answer"])
            resAns = self.processPunctuation(resAns)
            resAns = self.processDigitArticle(resAns)
        for gtAnsDatum in gts["answers"]:
            otherGTAns = [item for item in gts["answers"] if item != gtAnsDatum]
            matchingAns = [item for item in otherGTAns if item["answer"] == resAns]
            acc = min(1, float(len(matchingAns)) / 3)
            gtAcc.append(acc)
        return float(sum(gtAcc)) / len(gtAcc)


ORACLE = OfficialOracle()


def test_tables_are_the_official_ones():
    assert len(PUNCTUATION) == 21 and ":" not in PUNCTUATION and "'" not in PUNCTUATION
    assert PUNCTUATION == OfficialOracle.punct
    assert len(CONTRACTIONS) == 120
    spot = {"dont": "don't", "Im": "I'm", "somebody'd": "somebodyd", "wheres": "where's", "youve": "you've", "ow's'at": "'ow's'at"}
    assert {k: CONTRACTIONS[k] for k in spot} == spot


def ten(*answers):
    """Pad to 10 answers with a filler that matches nothing."""
    return list(answers) + ["zzz"] * (10 - len(answers))


@pytest.mark.parametrize(
    "text,expected",
    [
        ("a-b -c", "ab c"),  # "-" touches a space somewhere: every "-" is deleted
        ("a-b-c", "a b c"),  # no mark touches a space: replaced by spaces
        ("1,000 dogs,cats", "1000 dogscats"),  # digit,digit anywhere: every mark is deleted
        ("dogs,cats", "dogs cats"),
        ("yes.", "yes"),  # periods not followed by a digit go
        ("3.5", "3.5"),  # ... but a decimal point stays
        ("u.s.a.", "usa"),
        ("(red)", " red "),
        ("what?!", "what  "),
        ("don't", "don't"),  # the apostrophe is not in the list
        ("." * 40, "." * 8),  # re.UNICODE passed as count: only 32 periods are removed
    ],
)
def test_process_punctuation_rules(text, expected):
    assert process_punctuation(text) == expected
    assert ORACLE.processPunctuation(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Two Dogs", "2 dogs"),
        ("none", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),
        ("a dog and the cat", "dog and cat"),
        ("an apple", "apple"),
        ("dont", "don't"),
        ("isnt it", "isn't it"),
        ("Im", "im"),  # lower-cased before the lookup, so the capitalised key never fires
        ("  spaced   out  ", "spaced out"),
    ],
)
def test_process_digit_article_rules(text, expected):
    assert process_digit_article(text) == expected
    assert ORACLE.processDigitArticle(text) == expected


@pytest.mark.parametrize(
    "prediction,answers,expected",
    [
        ("yes", ["yes"] * 10, 1.0),
        ("Yes", ["yes"] * 10, 0.0),  # identical answers: no normalisation of the prediction either
        ("yes.", ["yes"] * 10, 0.0),
        ("yes\n", ["yes"] * 10, 1.0),  # newlines/tabs become spaces and are stripped in every branch
        ("\tyes", ["yes\t"] * 10, 1.0),
        ("Yes.", ["yes"] * 9 + ["no"], 1.0),  # answers differ: both sides normalised
        ("two", ["2"] * 9 + ["3"], 1.0),
        ("the dog", ten("dog"), 0.3),  # 1 match: 9 of 10 subsets give 1/3
        ("dog", ten("dog", "dog"), 0.6),  # 2 matches: (2 * 1/3 + 8 * 2/3) / 10
        ("dog", ten("dog", "dog", "dog"), 0.9),  # 3 matches: (3 * 2/3 + 7 * 1) / 10
        ("dog", ten("dog", "dog", "dog", "dog"), 1.0),
        ("hot dog", ten("hot-dog", "hot - dog", "hot dog"), 0.9),
        ("1000", ten("1,000", "1000", "1,000"), 0.9),
        ("", ten("", "", ""), 0.9),
    ],
)
def test_hand_worked_item_accuracies(prediction, answers, expected):
    assert item_accuracy(prediction, answers) == pytest.approx(expected, abs=1e-12)
    assert ORACLE.accuracy(prediction, answers) == pytest.approx(expected, abs=1e-12)


def test_corpus_summary_and_answer_types():
    items = [
        {"id": 1, "pred": "yes", "answers": ["yes"] * 10, "answer_type": "yes/no"},
        {"id": 2, "pred": "no", "answers": ["yes"] * 10, "answer_type": "yes/no"},
        {"id": 3, "pred": "2", "answers": ten("2"), "answer_type": "number", "question_type": "how many"},
    ]
    result = vqa_accuracy(items)
    assert result["accuracy"] == pytest.approx((1 + 0 + 0.3) / 3)
    assert result["accuracy_percent"] == round(100 * 1.3 / 3, 2) == 43.33
    assert result["per_item"] == [{"id": 1, "acc": 1.0}, {"id": 2, "acc": 0.0}, {"id": 3, "acc": pytest.approx(0.3)}]
    assert result["by_answer_type"]["yes/no"] == {"accuracy": 0.5, "accuracy_percent": 50.0, "count": 2}
    assert result["by_answer_type"]["number"]["accuracy_percent"] == 30.0
    assert list(result["by_question_type"]) == ["how many"]


@pytest.mark.parametrize(
    "items,message",
    [
        ([], "non-empty list"),
        ({"id": 1}, "non-empty list"),
        ([{"pred": "a", "answers": ["a"]}], "no 'id'"),
        ([{"id": 1, "answers": ["a"]}], "no 'pred'"),
        ([{"id": 1, "pred": 3, "answers": ["a"]}], "'pred' must be a string"),
        ([{"id": 1, "pred": "a", "answers": "a"}], "non-empty list of strings"),
        ([{"id": 1, "pred": "a", "answers": []}], "non-empty list of strings"),
        ([{"id": 1, "pred": "a", "answers": ["a", None]}], "non-empty list of strings"),
        ([{"id": 1, "pred": "a", "answers": ["a"]}] * 2, "duplicate id"),
        ([{"id": [1], "pred": "a", "answers": ["a"]}], "string or an integer"),
    ],
)
def test_malformed_items_raise_user_errors(items, message):
    with pytest.raises(BadInputError, match=message):
        vqa_accuracy(items)


ANSWER_WORDS = ["yes", "no", "Yes", "2", "two", "1,000", "1000", "a", "the", "dog", "dog.", "hot-dog", "hot - dog", "dont", "don't", "3.5", "", " ", "\n", "\t", "(red)", "red", "caf\u00e9", "\u00fcber", "x/y", "x /y", "!", "?", "...", "ten", "none", "0"]
answer_text = st.lists(st.sampled_from(ANSWER_WORDS), min_size=1, max_size=3).map(" ".join) | st.text(max_size=12)


@settings(max_examples=200, deadline=None)
@given(prediction=answer_text, answers=st.lists(answer_text, min_size=10, max_size=10))
def test_agrees_with_the_official_loop(prediction, answers):
    score = item_accuracy(prediction, answers)
    assert 0.0 <= score <= 1.0
    assert score == ORACLE.accuracy(prediction, answers)


@settings(max_examples=200, deadline=None)
@given(answer=answer_text, prediction=answer_text)
def test_all_identical_answers_compare_raw_strings(answer, prediction):
    cleaned = lambda s: s.replace("\n", " ").replace("\t", " ").strip()  # noqa: E731
    expected = 1.0 if cleaned(prediction) == cleaned(answer) else 0.0
    assert item_accuracy(prediction, [answer] * 10) == expected
