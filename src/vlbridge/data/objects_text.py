"""Captions, VQA questions and word classes of the objects world.

`object_captions(scene, rng)` gives 6 differently worded, accurate captions. A shape is named
"<size> <colour> <shape>" as in the shapes world; a thing by "<size> <name>" ("a small dog"),
never by a colour. `object_questions(scene, rng)` asks only unambiguous questions:

  count     "how many objects are there?"
  yes/no    "is there a dog?" (one present object, one absent one)
  object    "what object is in the top left?" -> "dog"         (things only: category identity)
  colour    "what colour is the circle?"                      (a shape whose kind is unique)
  position  "where is the dog?" / "where is the star?"        (unique category)

Word classes split caption words for the study's category-vs-property analysis (LiMBeR's
noun / modifier view): `CATEGORY_WORDS` are object nouns (things and shapes), `PROPERTY_WORDS`
colours, sizes and positions. `ANSWER_VOCABULARY` lists the canonical answers of each
question type: the closed set that likelihood-ranked VQA chooses from.
"""

from __future__ import annotations

import random

from vlbridge.data.objects_scene import THINGS, ObjectScene, Thing, object_noun
from vlbridge.data.shapes_scene import CELL_NAMES, COLOURS, SHAPES, SIZES, SceneObject
from vlbridge.data.shapes_text import (
    COLOUR_SYNONYMS,
    NUMBER_WORDS,
    OPENERS,
    POSITION_PHRASES,
    POSITION_VARIANTS,
    YES_NO_VARIANTS,
    QuestionItem,
    article,
    describe_background,
    human_answers,
    listing,
    relation,
)

ANSWER_TYPES = ("count", "yes/no", "object", "colour", "position")
POSITIONS = tuple(name for row in CELL_NAMES for name in row)
ANSWER_VOCABULARY = {  # answer type -> canonical answers (the closed set of likelihood-ranked VQA)
    "count": tuple(str(n) for n in range(1, 7)),
    "yes/no": ("yes", "no"),
    "object": THINGS,
    "colour": COLOURS,
    "position": POSITIONS,
}
CATEGORY_WORDS = frozenset(THINGS) | frozenset(SHAPES)  # object nouns
POSITION_WORDS = frozenset({"top", "bottom", "left", "right", "centre", "center", "middle", "above", "below"})
PROPERTY_WORDS = frozenset(COLOURS) | frozenset(SIZES) | POSITION_WORDS  # modifiers: colour, size, position
THING_VARIANTS = {name: (f"a {name}", f"the {name}", f"{name}s") for name in THINGS}


def describe(obj: SceneObject | Thing, with_size: bool = False, with_position: bool = False) -> str:
    """'a dog', 'a small red circle', 'an apple in the top left'."""
    words = [obj.size] if with_size else []
    words += [object_noun(obj)] if isinstance(obj, Thing) else [obj.colour, obj.shape]
    phrase = " ".join(words)
    text = f"{article(phrase)} {phrase}"
    return f"{text} {POSITION_PHRASES[obj.position]}" if with_position else text


def object_captions(scene: ObjectScene, rng: random.Random) -> list[str]:
    """Six distinct, accurate captions of `scene` in varied wording."""
    objects = rng.sample(scene.objects, len(scene.objects))  # a random order
    captions = _single(scene, objects[0], rng) if len(objects) == 1 else _multiple(scene, objects, rng)
    unique = list(dict.fromkeys(captions))
    if len(unique) != len(captions):
        raise AssertionError(f"caption templates produced duplicates: {captions}")
    return unique


def _single(scene: ObjectScene, obj, rng: random.Random) -> list[str]:
    return [
        describe(obj, with_size=True),
        describe(obj, with_position=True),
        f"there is {describe(obj, with_size=True, with_position=True)}",
        f"{describe(obj)} on {describe_background(scene)}",
        f"a single object: {describe(obj, with_size=True)}",
        f"{rng.choice(OPENERS)} {describe(obj)}",
    ]


def _multiple(scene: ObjectScene, objects: list, rng: random.Random) -> list[str]:
    count = NUMBER_WORDS[len(objects)]
    first, second = objects[0], objects[1]
    related = f"{describe(first, with_size=True)} {relation(first, second, rng)} {describe(second, with_size=True)}"
    if len(objects) > 2:
        related += ", and " + listing([describe(obj, with_position=True) for obj in objects[2:]])
    others = len(objects) - 1
    return [
        related,
        f"{count} objects: {listing([describe(obj) for obj in objects])}",
        f"{listing([describe(obj, with_size=True) for obj in objects])} on {describe_background(scene)}",
        f"there are {count} objects: {listing([describe(obj, with_position=True) for obj in objects])}",
        f"{describe(objects[-1], with_position=True)} and {NUMBER_WORDS[others]} other {'object' if others == 1 else 'objects'}",
        f"{rng.choice(OPENERS)} {count} objects, {listing([describe(obj) for obj in reversed(objects)])}",
    ]


def object_questions(scene: ObjectScene, rng: random.Random) -> list[QuestionItem]:
    """Unambiguous questions about `scene` (see the module docstring for the types)."""
    nouns = scene.nouns
    items = [_item("how many objects are there?", str(len(scene.objects)), (NUMBER_WORDS[len(scene.objects)],),
                   "count", rng)]
    items += _yes_no(scene, rng)
    for thing in scene.things:
        question = f"what object is {POSITION_PHRASES[thing.position]}?"
        items.append(_item(question, thing.name, THING_VARIANTS[thing.name], "object", rng))
    for shape in scene.shapes:
        if nouns.count(shape.shape) == 1:
            variants = (f"bright {shape.colour}", f"{shape.colour} colour") + COLOUR_SYNONYMS.get(shape.colour, ())
            items.append(_item(f"what colour is the {shape.shape}?", shape.colour, variants, "colour", rng))
    for obj in scene.objects:
        noun = object_noun(obj)
        if nouns.count(noun) == 1:
            items.append(_item(f"where is the {noun}?", obj.position, POSITION_VARIANTS[obj.position], "position", rng))
    return items


def _yes_no(scene: ObjectScene, rng: random.Random) -> list[QuestionItem]:
    """'Is there a <thing>?' for one present and one absent thing (shapes: colour + shape)."""
    present = [describe(obj) for obj in scene.objects]
    absent_things = [name for name in THINGS if name not in scene.nouns]
    items = [_item(f"is there {rng.choice(present)}?", "yes", YES_NO_VARIANTS["yes"], "yes/no", rng)]
    name = rng.choice(absent_things)
    items.append(_item(f"is there {article(name)} {name}?", "no", YES_NO_VARIANTS["no"], "yes/no", rng))
    return items


def _item(question: str, canonical: str, variants: tuple[str, ...], answer_type: str, rng: random.Random) -> QuestionItem:
    return QuestionItem(question, canonical, human_answers(canonical, variants, rng), answer_type)


def word_class(word: str) -> str | None:
    """'category', 'property' or None for a caption word (lower-cased, punctuation stripped)."""
    word = word.strip(".,:;!?").lower()
    if word in CATEGORY_WORDS or (word.endswith("s") and word[:-1] in CATEGORY_WORDS):
        return "category"
    if word in PROPERTY_WORDS:
        return "property"
    return None
