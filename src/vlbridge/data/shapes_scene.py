"""Vocabulary, domains and scene sampling of the procedural shapes world.

A `Scene` is a light background with 1..N coloured shapes, each in its own cell of a 3x3
grid (so "top left", "centre", "to the left of" are always unambiguous). Scenes are drawn
by `shapes_render.render_scene` and described by `shapes_text`; `vlbridge.data.shapes`
is the public entry point that ties the three together.

Compositional domains (like NoCaps): `HELD_OUT_COMBOS` is a fixed set of 12 of the 64
colour-shape combinations. Every colour and every shape is held out in one or two
combinations, so each word is still seen in training; only the *pairing* is new.
  - "in":   every object is a seen combination (the only domain of the train split)
  - "near": at least one seen and at least one held-out object (needs >= 2 objects)
  - "out":  every object is a held-out combination

Every image is a pure function of (seed, split, domain, index): `scene_rng` seeds a
`random.Random` from that key (SHA-512 of its bytes, stable across Python versions), so
image i never depends on how many others were made. Python's generator is used because
it is ~5x cheaper to seed and to draw scalars from than numpy's, which matters at 10k images.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from vlbridge.errors import UserError

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross", "heart", "diamond")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "brown", "black")
SIZES = ("small", "large")
BACKGROUNDS = ("white", "light grey", "cream", "pale blue", "pale green")  # all light
SPLITS = ("train", "val", "test")
DOMAINS = ("in", "near", "out")
MAX_OBJECTS = 6  # hard upper limit of objects per scene (9 grid cells, readable captions)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 1024  # shapes are unreadable below 16 px

# 12 of the 64 combinations never appear in the train split (images, captions or questions).
HELD_OUT_COMBOS = (
    ("red", "star"),
    ("green", "heart"),
    ("blue", "triangle"),
    ("yellow", "circle"),
    ("purple", "square"),
    ("orange", "hexagon"),
    ("brown", "diamond"),
    ("black", "cross"),
    ("red", "hexagon"),
    ("green", "diamond"),
    ("blue", "heart"),
    ("yellow", "cross"),
)
ALL_COMBOS = tuple((colour, shape) for colour in COLOURS for shape in SHAPES)
SEEN_COMBOS = tuple(combo for combo in ALL_COMBOS if combo not in HELD_OUT_COMBOS)

# Object geometry, as fractions of the image side.
CELL_CENTRES = (1 / 6, 1 / 2, 5 / 6)  # x (columns) and y (rows) of the 3x3 grid cells
RADIUS = {"small": 0.1, "large": 0.15}  # circumradius of each size
JITTER = 0.01  # max offset of an object from its cell centre (keeps objects apart)

CELL_NAMES = (
    ("top left", "top", "top right"),
    ("left", "centre", "right"),
    ("bottom left", "bottom", "bottom right"),
)


def class_names(include_held_out: bool = False) -> list[str]:
    """'colour shape' class names, in COLOURS x SHAPES order; seen combinations unless asked."""
    combos = ALL_COMBOS if include_held_out else SEEN_COMBOS
    return [f"{colour} {shape}" for colour, shape in combos]


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene; x, y are its centre as fractions of the image side (0..1)."""

    shape: str  # one of SHAPES
    colour: str  # one of COLOURS
    size: str  # "small" or "large"
    x: float  # horizontal centre, 0 = left edge, 1 = right edge
    y: float  # vertical centre, 0 = top edge, 1 = bottom edge

    @property
    def combo(self) -> tuple[str, str]:
        return (self.colour, self.shape)

    @property
    def column(self) -> int:
        """0 = left, 1 = centre, 2 = right third of the image."""
        return min(2, max(0, int(self.x * 3)))

    @property
    def row(self) -> int:
        """0 = top, 1 = middle, 2 = bottom third of the image."""
        return min(2, max(0, int(self.y * 3)))

    @property
    def position(self) -> str:
        """Where the object is: 'top left', 'top', ..., 'centre', ..., 'bottom right'."""
        return CELL_NAMES[self.row][self.column]


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw and describe one image; render with `render_scene`."""

    objects: tuple[SceneObject, ...]  # 1..MAX_OBJECTS shapes, in distinct grid cells
    background: str  # one of BACKGROUNDS
    texture_seed: int = 0  # seeds the random texture of the "noisy" shift

    def __post_init__(self) -> None:
        if not self.objects:
            raise ValueError("a scene needs at least one object, got none")
        for obj in self.objects:
            if obj.shape not in SHAPES or obj.colour not in COLOURS or obj.size not in SIZES:
                raise ValueError(
                    f"object needs shape in {SHAPES}, colour in {COLOURS}, size in {SIZES}; got {obj}"
                )
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")

    @property
    def domain(self) -> str:
        """'in', 'near' or 'out' from how many objects are held-out combinations."""
        held = sum(obj.combo in HELD_OUT_COMBOS for obj in self.objects)
        if held == 0:
            return "in"
        return "out" if held == len(self.objects) else "near"

    @property
    def label(self) -> str | None:
        """'colour shape' class name for a single-object scene, None otherwise."""
        if len(self.objects) != 1:
            return None
        return f"{self.objects[0].colour} {self.objects[0].shape}"


def check_choice(name: str, value: str | None, options: tuple[str, ...], allow_none: bool = True) -> None:
    """UserError unless `value` is one of `options` (or None when allowed)."""
    if value is None and allow_none:
        return
    if value not in options:
        raise UserError(f"{name} must be one of {', '.join(options)}; got {value!r}")


def scene_rng(seed: int, split: str, domain: str, index: int, purpose: str) -> random.Random:
    """Random stream for one image and one purpose, a pure function of its key.

    `purpose` separates the streams ("scene", "captions", "questions") so generating
    captions never shifts what the questions or the picture look like.
    """
    return random.Random(f"shapes|{seed}|{split}|{domain}|{index}|{purpose}".encode())


def sample_scene(
    rng: random.Random,
    domain: str,
    min_objects: int = 1,
    max_objects: int = 3,
    combos: list[tuple[str, str]] | None = None,
) -> Scene:
    """A random scene of `domain`; `combos` fixes the objects' (colour, shape) pairs instead."""
    if combos is None:
        low = max(min_objects, 2) if domain == "near" else min_objects
        n_objects = rng.randint(low, max_objects)
        combos = sample_combos(rng, domain, n_objects)
    cells = rng.sample(range(9), len(combos))  # distinct grid cells, row-major
    objects = []
    for (colour, shape), cell in zip(combos, cells):
        row, column = divmod(cell, 3)
        x = CELL_CENTRES[column] + rng.uniform(-JITTER, JITTER)
        y = CELL_CENTRES[row] + rng.uniform(-JITTER, JITTER)
        objects.append(SceneObject(shape, colour, rng.choice(SIZES), x, y))
    background = rng.choice(BACKGROUNDS)
    return Scene(tuple(objects), background, texture_seed=rng.getrandbits(31))


def sample_combos(rng: random.Random, domain: str, n_objects: int) -> list[tuple[str, str]]:
    """n distinct (colour, shape) pairs whose mix of seen / held-out matches `domain`."""
    if domain == "in":
        return rng.sample(SEEN_COMBOS, n_objects)
    if domain == "out":
        return rng.sample(HELD_OUT_COMBOS, n_objects)
    if n_objects < 2:
        raise UserError(f"near-domain scenes need at least 2 objects, got {n_objects}")
    n_held = rng.randint(1, n_objects - 1)  # 1 .. n-1 held-out, the rest seen
    combos = rng.sample(HELD_OUT_COMBOS, n_held) + rng.sample(SEEN_COMBOS, n_objects - n_held)
    rng.shuffle(combos)
    return combos


def check_object_range(min_objects: int, max_objects: int) -> None:
    """UserError unless 1 <= min_objects <= max_objects <= MAX_OBJECTS."""
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise UserError(
            f"objects per image must satisfy 1 <= min_objects <= max_objects <= {MAX_OBJECTS}; "
            f"got min_objects={min_objects}, max_objects={max_objects}"
        )


def check_image_size(image_size: int) -> None:
    if not isinstance(image_size, int) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise UserError(f"image size must be an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}, got {image_size!r}")


def check_seed(seed: int) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")


def check_count(name: str, n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise UserError(f"{name} must be a non-negative integer, got {n!r}")
