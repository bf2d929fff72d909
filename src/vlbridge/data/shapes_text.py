"""Captions and VQA questions (with 10 human-like answers) for shapes-world scenes.

`scene_captions(scene, rng)` returns 6 differently-worded captions, all true of the scene:
full descriptions with sizes and positions, counts ("two shapes: ..."), spatial relations
("a red circle to the left of a blue square") and partial ones ("a red circle in the top
left and one other shape"). An object is always named as "<colour> <shape>" (optionally
after its size), so captions can be parsed back.

`scene_questions(scene, rng, distractor_pool)` returns `QuestionItem`s of five types, asked
only when the answer is unambiguous for the scene:
  colour   "what colour is the circle?"          only if exactly one circle
  shape    "what shape is the red object?"       only if exactly one red object
  count    "how many shapes are there?", "how many red shapes are there?"
  yes/no   "is there a blue square?"             one true and one false combination
  position "where is the star?"                  "top left", "centre", "bottom", ...
Each has 10 answers: 7-9 canonical, the rest realistic variants ("two", "center", "yep").
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from vlbridge.data.shapes_scene import Scene, SceneObject

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ANSWER_TYPES = ("colour", "shape", "count", "yes/no", "position")
N_ANSWERS = 10  # answers per question (VQAv2 protocol)

POSITION_PHRASES = {
    "top left": "in the top left",
    "top": "at the top",
    "top right": "in the top right",
    "left": "on the left",
    "centre": "in the centre",
    "right": "on the right",
    "bottom left": "in the bottom left",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right",
}
POSITION_VARIANTS = {
    "top left": ("upper left", "top left corner", "left"),
    "top": ("at the top", "up", "top middle"),
    "top right": ("upper right", "top right corner", "right"),
    "left": ("on the left", "left side", "middle left"),
    "centre": ("center", "middle", "in the middle"),
    "right": ("on the right", "right side", "middle right"),
    "bottom left": ("lower left", "bottom left corner", "left"),
    "bottom": ("at the bottom", "down", "bottom middle"),
    "bottom right": ("lower right", "bottom right corner", "right"),
}
SHAPE_VARIANTS = {
    "circle": ("a circle", "round", "dot"),
    "square": ("a square", "box", "rectangle"),
    "triangle": ("a triangle", "triangular"),
    "star": ("a star", "star shape"),
    "hexagon": ("a hexagon", "hexagonal"),
    "cross": ("a cross", "plus", "plus sign"),
    "heart": ("a heart", "love heart"),
    "diamond": ("a diamond", "rhombus"),
}
COLOUR_SYNONYMS = {"purple": ("violet",), "black": ("dark",), "brown": ("dark brown",), "orange": ("dark orange",)}
OPENERS = ("a drawing of", "an image of", "a simple picture of")  # wordings of the "drawing" caption
ON_BACKGROUND = ("on", "against")  # wordings of the "background" caption
YES_NO_VARIANTS = {"yes": ("yep", "yeah", "yes it is"), "no": ("nope", "no there isn't", "none")}


@dataclass(frozen=True)
class QuestionItem:
    """One question about a scene with its 10 answers; the first canonical answer is `answer`."""

    question: str  # e.g. "what colour is the circle?"
    answer: str  # the canonical (majority) answer
    answers: tuple[str, ...]  # the 10 human-like answers
    answer_type: str  # one of ANSWER_TYPES


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def describe(obj: SceneObject, with_size: bool = False, with_position: bool = False) -> str:
    """'a red circle', 'a small red circle', 'an orange star in the top left'."""
    words = f"{obj.size} {obj.colour} {obj.shape}" if with_size else f"{obj.colour} {obj.shape}"
    text = f"{article(words)} {words}"
    return f"{text} {POSITION_PHRASES[obj.position]}" if with_position else text


def listing(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def relation(first: SceneObject, second: SceneObject, rng: random.Random) -> str:
    """A true spatial relation of `first` to `second` (objects are in distinct grid cells)."""
    options = []
    if first.column != second.column:
        options.append("to the left of" if first.column < second.column else "to the right of")
    if first.row != second.row:
        options.append("above" if first.row < second.row else "below")
    return rng.choice(options)


def scene_captions(scene: Scene, rng: random.Random) -> list[str]:
    """Six distinct, accurate captions of `scene` in varied wording."""
    objects = rng.sample(scene.objects, len(scene.objects))  # a random order
    captions = _single_captions(scene, objects[0], rng) if len(objects) == 1 else _multi_captions(scene, objects, rng)
    unique = list(dict.fromkeys(captions))
    if len(unique) != len(captions):
        raise AssertionError(f"caption templates produced duplicates: {captions}")
    return unique


def _single_captions(scene: Scene, obj: SceneObject, rng: random.Random) -> list[str]:
    shape_word = "shape" if rng.random() < 0.5 else "object"
    return [
        describe(obj, with_size=True),
        describe(obj, with_position=True),
        f"there is {describe(obj, with_size=True, with_position=True)}",
        f"{describe(obj)} {rng.choice(ON_BACKGROUND)} {describe_background(scene)}",
        f"a single {shape_word}: {describe(obj, with_size=True)}",
        f"{rng.choice(OPENERS)} {describe(obj)}",
    ]


def _multi_captions(scene: Scene, objects: list[SceneObject], rng: random.Random) -> list[str]:
    count = NUMBER_WORDS[len(objects)]
    noun = "shapes" if rng.random() < 0.5 else "objects"
    first, second = objects[0], objects[1]
    related = f"{describe(first, with_size=True)} {relation(first, second, rng)} {describe(second, with_size=True)}"
    if len(objects) > 2:
        rest = listing([describe(obj, with_position=True) for obj in objects[2:]])
        related = f"{related}, and {rest}"
    others = len(objects) - 1
    other_noun = "shape" if others == 1 else "shapes"
    return [
        related,
        f"{count} {noun}: {listing([describe(obj) for obj in objects])}",
        f"{listing([describe(obj, with_size=True) for obj in objects])} {rng.choice(ON_BACKGROUND)} "
        f"{describe_background(scene)}",
        f"there are {count} shapes: {listing([describe(obj, with_position=True) for obj in objects])}",
        f"{describe(objects[-1], with_position=True)} and {NUMBER_WORDS[others]} other {other_noun}",
        f"{rng.choice(OPENERS)} {count} {noun}, {listing([describe(obj) for obj in reversed(objects)])}",
    ]


def describe_background(scene: Scene) -> str:
    return f"{article(scene.background)} {scene.background} background"


def human_answers(canonical: str, variants: tuple[str, ...], rng: random.Random) -> tuple[str, ...]:
    """10 answers: 7-9 copies of `canonical`; 1-3 random slots hold answers drawn from `variants`."""
    answers = [canonical] * N_ANSWERS
    for slot in rng.sample(range(N_ANSWERS), N_ANSWERS - rng.randint(7, 9)):  # 1-3 random slots
        answers[slot] = rng.choice(variants)
    return tuple(answers)


def _item(
    question: str, canonical: str, variants: tuple[str, ...], answer_type: str, rng: random.Random
) -> QuestionItem:
    return QuestionItem(question, canonical, human_answers(canonical, variants, rng), answer_type)


def _count_item(question: str, count: int, noun: str, rng: random.Random) -> QuestionItem:
    plural = noun if count == 1 else noun + "s"
    variants = (NUMBER_WORDS[count], f"{count} {plural}")
    return _item(question, str(count), variants, "count", rng)


def _colour_item(question: str, colour: str, rng: random.Random) -> QuestionItem:
    variants = (f"bright {colour}", f"{colour} colour") + COLOUR_SYNONYMS.get(colour, ())
    return _item(question, colour, variants, "colour", rng)


def scene_questions(scene: Scene, rng: random.Random, distractor_pool: tuple) -> list[QuestionItem]:
    """Unambiguous questions about `scene`; 'no' questions name a combo from `distractor_pool`."""
    objects = scene.objects
    shape_counts = _counts(obj.shape for obj in objects)
    colour_counts = _counts(obj.colour for obj in objects)
    noun = "shape" if rng.random() < 0.5 else "object"
    items = [_count_item(f"how many {noun}s are there?", len(objects), noun, rng)]
    colour = rng.choice(objects).colour
    items.append(_count_item(f"how many {colour} shapes are there?", colour_counts[colour], "shape", rng))
    for obj in objects:
        if shape_counts[obj.shape] == 1:
            items.append(_colour_item(f"what colour is the {obj.shape}?", obj.colour, rng))
    for obj in objects:
        if colour_counts[obj.colour] == 1:
            thing = rng.choice(("object", "one", "thing"))
            question = f"what shape is the {obj.colour} {thing}?"
            items.append(_item(question, obj.shape, SHAPE_VARIANTS[obj.shape], "shape", rng))
    items.extend(_yes_no_items(scene, rng, distractor_pool))
    for obj in objects:
        name = obj.shape if shape_counts[obj.shape] == 1 else f"{obj.colour} {obj.shape}"
        items.append(_item(f"where is the {name}?", obj.position, POSITION_VARIANTS[obj.position], "position", rng))
    return items


def _yes_no_items(scene: Scene, rng: random.Random, distractor_pool: tuple) -> list[QuestionItem]:
    """One 'yes' question about a present combo, one 'no' about an absent one (if the pool has any)."""
    present = [obj.combo for obj in scene.objects]
    colour, shape = rng.choice(present)
    items = [_item(f"is there {article(colour)} {colour} {shape}?", "yes", YES_NO_VARIANTS["yes"], "yes/no", rng)]
    absent = [combo for combo in distractor_pool if combo not in present]
    # Prefer near misses (same colour or same shape as something in the scene).
    colours, shapes = {c for c, _ in present}, {s for _, s in present}
    near_misses = [combo for combo in absent if combo[0] in colours or combo[1] in shapes]
    pool = near_misses if near_misses and rng.random() < 0.7 else absent
    if pool:
        colour, shape = rng.choice(pool)
        question = f"is there {article(colour)} {colour} {shape}?"
        items.append(_item(question, "no", YES_NO_VARIANTS["no"], "yes/no", rng))
    return items


def _counts(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts
