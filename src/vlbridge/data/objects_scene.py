"""The objects world's scenes: shapes-world scenes where some objects are named things (Twemoji).

A scene holds 1..N objects, each in its own cell of the 3x3 grid (as in the shapes world). An
object is either a coloured shape (`shapes_scene.SceneObject`: colour, shape, size) or a
`Thing`: one of `THINGS`, everyday nouns the language model knows ("dog", "apple", "bus"),
drawn from its Twemoji picture. Things carry a category and a size but no colour word (their
colours are their own), so captions name them by category alone: "a small dog in the top left".
That gives the study what the plain shapes world lacks: category words whose transfer into the
LM can be measured apart from property words (colour, size, position).

Every scene is a pure function of (seed, split, index) through `scene_rng` ("objects" streams,
never shared with the shapes world). Held-out colour-shape combinations (`HELD_OUT_COMBOS`)
never appear here, in any split: this world has one domain.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from PIL import Image

from vlbridge.data.shapes_scene import BACKGROUNDS, CELL_CENTRES, CELL_NAMES, JITTER, SEEN_COMBOS, SIZES, SceneObject

# Everyday nouns, each one token for the embedded LM, drawn from Twemoji (emoji short name).
THING_EMOJI = {
    "dog": "dog", "cat": "cat", "fish": "fish", "bird": "bird", "horse": "horse", "pig": "pig", "cow": "cow",
    "frog": "frog", "elephant": "elephant", "rabbit": "rabbit", "apple": "apple", "banana": "banana",
    "pizza": "pizza", "cake": "cake", "strawberry": "strawberry", "carrot": "carrot", "car": "red_car", "bus": "bus",
    "house": "house", "tree": "deciduous_tree", "guitar": "guitar", "umbrella": "umbrella", "rocket": "rocket",
    "boat": "sailboat",
}
THINGS = tuple(THING_EMOJI)  # the 24 thing categories
THING_RADIUS = {"small": 0.12, "large": 0.16}  # half the side of a thing's picture, as a fraction of the image


@dataclass(frozen=True)
class Thing:
    """A named object drawn from its picture; x, y are its centre as fractions of the image side."""

    name: str  # one of THINGS
    size: str  # "small" or "large"
    x: float  # horizontal centre, 0 = left edge, 1 = right edge
    y: float  # vertical centre, 0 = top edge, 1 = bottom edge

    @property
    def column(self) -> int:
        return min(2, max(0, int(self.x * 3)))

    @property
    def row(self) -> int:
        return min(2, max(0, int(self.y * 3)))

    @property
    def position(self) -> str:
        return CELL_NAMES[self.row][self.column]

    @property
    def noun(self) -> str:
        return self.name


def object_noun(obj: SceneObject | Thing) -> str:
    """The category word of an object: the thing's name or the shape's name."""
    return obj.name if isinstance(obj, Thing) else obj.shape


@dataclass(frozen=True)
class ObjectScene:
    """Everything needed to draw and describe one objects-world image."""

    objects: tuple[SceneObject | Thing, ...]  # 1..MAX objects in distinct grid cells
    background: str  # one of BACKGROUNDS
    texture_seed: int = 0  # seeds the random texture of the "noisy" shift

    def __post_init__(self) -> None:
        if not self.objects:
            raise ValueError("a scene needs at least one object, got none")
        for obj in self.objects:
            if isinstance(obj, Thing) and (obj.name not in THINGS or obj.size not in SIZES):
                raise ValueError(f"a thing needs a name in THINGS and a size in {SIZES}, got {obj}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")

    @property
    def things(self) -> tuple[Thing, ...]:
        return tuple(obj for obj in self.objects if isinstance(obj, Thing))

    @property
    def shapes(self) -> tuple[SceneObject, ...]:
        return tuple(obj for obj in self.objects if isinstance(obj, SceneObject))

    @property
    def nouns(self) -> tuple[str, ...]:
        """Category word of every object, in scene order (repeats kept)."""
        return tuple(object_noun(obj) for obj in self.objects)

    @property
    def label(self) -> str | None:
        """The class of a one-object scene: the thing's name or 'colour shape'; None otherwise."""
        if len(self.objects) != 1:
            return None
        obj = self.objects[0]
        return obj.name if isinstance(obj, Thing) else f"{obj.colour} {obj.shape}"


def objects_rng(seed: int, split: str, index: int, purpose: str, stream: str = "scenes") -> random.Random:
    """Random stream of one image and one purpose, a pure function of its key."""
    return random.Random(f"objects|{seed}|{split}|{stream}|{index}|{purpose}".encode())


def sample_object_scene(rng: random.Random, min_objects: int, max_objects: int, thing_fraction: float) -> ObjectScene:
    """A random scene: each object is a thing with probability `thing_fraction`, else a seen-combo shape."""
    n_objects = rng.randint(min_objects, max_objects)
    cells = rng.sample(range(9), n_objects)
    kinds = [rng.random() < thing_fraction for _ in range(n_objects)]
    names = iter(rng.sample(THINGS, sum(kinds)))
    combos = iter(rng.sample(SEEN_COMBOS, n_objects - sum(kinds)))
    objects: list[SceneObject | Thing] = []
    for is_thing, cell in zip(kinds, cells):
        row, column = divmod(cell, 3)
        x = CELL_CENTRES[column] + rng.uniform(-JITTER, JITTER)
        y = CELL_CENTRES[row] + rng.uniform(-JITTER, JITTER)
        size = rng.choice(SIZES)
        if is_thing:
            objects.append(Thing(next(names), size, x, y))
        else:
            colour, shape = next(combos)
            objects.append(SceneObject(shape, colour, size, x, y))
    return ObjectScene(tuple(objects), rng.choice(BACKGROUNDS), texture_seed=rng.getrandbits(31))


def single_object_scene(rng: random.Random, obj_class: str) -> ObjectScene:
    """A one-object scene of class `obj_class` (a thing name or 'colour shape'), randomly placed and sized."""
    cell = rng.randrange(9)
    row, column = divmod(cell, 3)
    x = CELL_CENTRES[column] + rng.uniform(-JITTER, JITTER)
    y = CELL_CENTRES[row] + rng.uniform(-JITTER, JITTER)
    size = rng.choice(SIZES)
    if obj_class in THINGS:
        obj: SceneObject | Thing = Thing(obj_class, size, x, y)
    else:
        colour, shape = obj_class.split(" ", 1)
        obj = SceneObject(shape, colour, size, x, y)
    return ObjectScene((obj,), rng.choice(BACKGROUNDS), texture_seed=rng.getrandbits(31))


@functools.lru_cache(maxsize=None)
def thing_picture(name: str) -> Image.Image:
    """The RGBA Twemoji picture of thing `name` (64 px; read once per process)."""
    import json

    from vlbridge import assets

    folder = assets.require("twemoji")
    short_name = THING_EMOJI[name]
    entries = json.loads((folder / "emoji.json").read_text(encoding="utf-8"))
    entry = next(e for e in entries if short_name in e.get("short_names", [e.get("short_name")]))
    with Image.open(folder / "img" / "twitter" / "64" / entry["image"]) as image:
        return image.convert("RGBA")


@functools.lru_cache(maxsize=512)
def sized_picture(name: str, side: int) -> Image.Image:
    """Thing `name`'s picture resized to `side` x `side` pixels (RGBA, Lanczos)."""
    return thing_picture(name).resize((side, side), Image.Resampling.LANCZOS)
