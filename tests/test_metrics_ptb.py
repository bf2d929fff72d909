"""The Python PTB tokenizer agrees with pycocoevalcap's Java pipeline, minus its line trap.

- A table of ordinary captions with the Stanford jar's outputs (quotes, contractions,
  possessives, hyphens, brackets, numbers, fractions, abbreviations, ellipses, dashes).
- A live comparison with the real Java tool (pycocoevalcap's PTBTokenizer, Stanford CoreNLP
  3.4.1) on ~600 generated and perturbed captions; skipped when java is not installed.
- The line trap: the Java pipeline shifts captions after one containing \\r, \\v, \\f, U+0085,
  U+2028 or U+2029; ours treats those characters as whitespace.
- Internal invariants: every rule's first-character class covers its matches, and the fast
  paths give exactly the full lexer's tokens.
"""

import random
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlbridge.evaluation.metrics.ptb_tokenizer import _RULES, PUNCTUATIONS, ptb_tokenize, ptb_tokens

# (caption, what pycocoevalcap's PTBTokenizer returns for it) -- outputs produced by the Stanford jar.
JAVA_OUTPUTS = [
    ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
    ('A dog\'s toy, lying "on the grass".', "a dog 's toy lying on the grass"),
    ("The dogs' bowls are empty.", "the dogs bowls are empty"),
    ("I don't think it's a cat; it can't be.", "i do n't think it 's a cat it ca n't be"),
    ("She's wearing a t-shirt and a 3-year-old is next to her.", "she 's wearing a t-shirt and a 3-year-old is next to her"),
    ("A woman (in red) holds an umbrella.", "a woman -lrb- in red -rrb- holds an umbrella"),
    ("Two people [on bikes] and {a car}.", "two people -lsb- on bikes -rsb- and -lcb- a car -rcb-"),
    ("A pizza cut into 8 slices, 3.5 inches wide and 1,000 calories.", "a pizza cut into 8 slices 3.5 inches wide and 1,000 calories"),
    ("The clock reads 10:30 a.m. on Main St. today.", "the clock reads 10:30 a.m. on main st. today"),
    ("Wait... what is that?!", "wait what is that ?!"),
    ("A sign that says 'STOP' near the U.S. border.", "a sign that says stop near the u.s. border"),
    ("A man -- or a woman -- walks by.", "a man or a woman walks by"),
    ("A cake with 1/2 of it eaten and 5 1/2 candles.", "a cake with 1/2 of it eaten and 5\xa01/2 candles"),
    ("Mr. Smith's dog vs. Dr. Who's cat, etc.", "mr. smith 's dog vs. dr. who 's cat etc."),
    ("A plate of food\u2026 and a fork.", "a plate of food and a fork"),
    ("\u201cHappy birthday\u201d written on a cake.", "happy birthday written on a cake"),
    ("A 50% discount costs $5.99 at 5pm.", "a 50 % discount costs $ 5.99 at 5pm"),
    ("A 6'2\" man stands next to a 5' fence.", "a 6 2 man stands next to a 5 fence"),
    ("Cannot see the rock'n'roll band, gonna leave.", "can not see the rock 'n' roll band gon na leave"),
    ("the letter a. on a sign", "the letter a. on a sign"),
    ("it is a. The end", "it is a the end"),
    ("there is no. 5 and no.", "there is no. 5 and no"),
]

WORDS = (
    "a an the man woman dog cat two red blue sitting on in at of with near holding riding big street table bus "
    "pizza plate frisbee grass beach sky people group young old bike skateboard snow field park"
).split()
SPICE = [
    "don't", "can't", "won't", "it's", "I'm", "you're", "we've", "they'll", "he'd", "that's", "ain't", "cannot",
    "gonna", "y'all", "o'clock", "ma'am", "rock'n'roll", "'em", "'90s", "90's", "don\u2019t", "man's", "dogs'",
    "James's", "woman\u2019s", "t-shirt", "x-ray", "3-year-old", "black-and-white", "e-mail", "5-6", "mother-in-law",
    "3.5", "1,000", "0.5", ".5", "10:30", "1/2", "5 1/2", "2nd", "21st", "100%", "$5", "$1.50", "\u00a310", "\u20ac20",
    "1990s", "#1", "No. 5", "-5", "10am", "5 p.m.", "7 a.m.", "555-1234", "9/11", "Mr.", "Dr.", "St.", "U.S.",
    "U.K.", "e.g.", "i.e.", "etc.", "vs.", "Inc.", "Jan.", "ft.", "a.k.a.", "Ph.D.", "NYC", "TV", "O'Brien", "c++",
]
PUNCT = [
    ",", ".", ";", ":", "!", "?", "...", "\u2026", "!!", "?!", " -", " --", " \u2014", " \u2013", "..", " . . .", "/",
    " & ", "&", " + ", "*", ":)", "%", "=", "~", "<", ">", "\u00b0", "\u00bd", "\u2122", "\u00b7",
]
WRAPS = [('"', '"'), ("(", ")"), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("[", "]"), ("{", "}")]


def generated_captions(count: int, seed: int) -> list[str]:
    """Caption-like strings mixing plain words with the phenomena above, some perturbed."""
    rng = random.Random(seed)
    captions = []
    for _ in range(count):
        words = []
        for _ in range(rng.randint(1, 14)):
            word = rng.choice(WORDS) if rng.random() < 0.6 else rng.choice(SPICE)
            word = word.capitalize() if rng.random() < 0.1 else word
            if rng.random() < 0.12:
                left, right = rng.choice(WRAPS)
                word = left + word + right
            if rng.random() < 0.2:
                word += rng.choice(PUNCT)
            words.append(word)
        caption = " ".join(words) + rng.choice(["", ".", ".", "!", "?", "...", " ."])
        if rng.random() < 0.25:  # a random edit, as typos and odd characters occur in real captions
            chars = list(caption)
            chars.insert(rng.randint(0, len(chars)), rng.choice("abcXYZ019 .,;:!?'\"-()[]/&$%#@*+=<>_`\u00e9\u2019\u2014"))
            caption = "".join(chars)
        captions.append(caption[0].upper() + caption[1:] if rng.random() < 0.4 else caption)
    return captions


@pytest.mark.parametrize("caption,expected", JAVA_OUTPUTS)
def test_matches_stanford_outputs_on_ordinary_captions(caption, expected):
    assert ptb_tokenize(caption) == expected


@pytest.mark.skipif(shutil.which("java") is None, reason="needs java for pycocoevalcap's Stanford tokenizer")
def test_agrees_with_the_java_tokenizer_on_hundreds_of_captions():
    tokenizer_module = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    captions = [c for c, _ in JAVA_OUTPUTS] + generated_captions(600, seed=2024)
    # A neutral spacer line between captions: the Java lexer's look-ahead can otherwise see the
    # next caption (e.g. "a." then a next line starting "The ..."), a cross-caption effect we do not copy.
    lines = {str(i): [{"caption": c}, {"caption": "x"}] for i, c in enumerate(captions)}
    java = tokenizer_module.PTBTokenizer().tokenize(lines)
    mismatches = [(c, java[str(i)][0], ptb_tokenize(c)) for i, c in enumerate(captions) if java[str(i)][0] != ptb_tokenize(c)]
    assert not mismatches, mismatches[:5]


@pytest.mark.skipif(shutil.which("java") is None, reason="needs java for pycocoevalcap's Stanford tokenizer")
def test_java_pipeline_line_trap_shifts_captions_and_ours_does_not():
    tokenizer_module = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    captions = {"1": [{"caption": "a dog\u2028runs fast"}], "2": [{"caption": "a cat sleeps"}]}
    java = tokenizer_module.PTBTokenizer().tokenize(captions)
    assert java["2"] == ["runs fast"]  # the second image got the tail of the first caption
    assert ptb_tokenize("a dog\u2028runs fast") == "a dog runs fast"
    assert ptb_tokenize("a cat sleeps") == "a cat sleeps"


@pytest.mark.parametrize("separator", ["\r", "\n", "\r\n", "\x0b", "\x0c", "\x85", "\u2028", "\u2029", "\t"])
def test_line_break_characters_are_whitespace(separator):
    assert ptb_tokenize(f"A dog's ball.{separator}It is red (very).") == ptb_tokenize("A dog's ball. It is red (very).")


def test_first_character_classes_cover_every_match():
    text_pool = generated_captions(150, seed=7) + [c for c, _ in JAVA_OUTPUTS]
    for text in text_pool:
        text = text + "\n"
        for position in range(len(text)):
            for rule in _RULES:
                if rule.pattern.match(text, position):
                    assert rule.first.match(text[position]), (rule.name, text, position)


def test_fast_paths_give_the_full_lexer_tokens():
    for caption in generated_captions(400, seed=11) + [c for c, _ in JAVA_OUTPUTS]:
        assert ptb_tokens(caption) == ptb_tokens(caption, fast_path=False), caption


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60))
def test_any_text_tokenizes_to_lowercase_tokens_without_punctuation(text):
    tokens = ptb_tokenize(text).split(" ")
    assert ptb_tokenize(text) == "" or all(tokens)
    assert not PUNCTUATIONS.intersection(tokens)
    assert ptb_tokenize(text) == ptb_tokenize(text).lower()
    assert ptb_tokens(text) == ptb_tokens(text, fast_path=False)
