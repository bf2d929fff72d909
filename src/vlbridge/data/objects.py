"""The objects world: seeded images of shapes and named things, with captions, VQA and labels.

The study's embedded task where categories matter. Each image holds 1-3 objects on a light
background, each either a coloured shape (the shapes world's vocabulary, seen combinations only)
or one of 24 everyday things drawn from Twemoji ("dog", "apple", "bus"; `THINGS`). Captions
name things by category and shapes by colour and shape (`objects_text`), so category words and
property words can be scored apart.

    image_text_records(n, split, seed, ...)   -> [ImageTextRecord] (6 captions; tags = object nouns)
    vqa_records(n_images, split, seed, ...)   -> [VQARecord] (count, yes/no, object, colour, position)
    classification_records(n, split, seed, classes="things")  -> one-object images, label = class

Image i of (seed, split) is a pure function of that key. Needs the embedded Twemoji asset
(`make setup`); a missing asset is one `AssetMissingError` naming the install command.
"""

from __future__ import annotations

from PIL import Image

from vlbridge.data.objects_scene import (
    THING_RADIUS,
    THINGS,
    ObjectScene,
    Thing,
    objects_rng,
    sample_object_scene,
    single_object_scene,
    sized_picture,
)
from vlbridge.data.objects_text import ANSWER_TYPES, object_captions, object_questions
from vlbridge.data.records import ImageTextRecord, VQARecord
from vlbridge.data.shapes_render import SHIFTS, draw_shape, render_scene
from vlbridge.data.shapes_scene import (
    MAX_OBJECTS,
    SPLITS,
    SceneObject,
    check_choice,
    check_count,
    check_image_size,
    check_object_range,
    check_seed,
    class_names,
)
from vlbridge.errors import UserError

__all__ = [
    "ANSWER_TYPES", "SHIFTS", "THINGS", "classification_records", "image_text_records", "object_classes",
    "render_object_scene", "scene_at", "vqa_records",
]

DEFAULT_MAX_OBJECTS = 3  # objects per image: 1..3, as the shapes world
DEFAULT_THING_FRACTION = 0.5  # chance that an object is a thing rather than a shape
CLASS_SETS = ("things", "shapes", "all")  # classification label sets


def render_object_scene(scene: ObjectScene, image_size: int = 64, shift: str | None = None, supersample: int = 2) -> Image.Image:
    """RGB image of `scene` under `shift` (the shapes world's shifts; a sketched thing is its outline)."""
    return render_scene(scene, image_size, shift, supersample, draw_objects=_draw_objects)


def _draw_objects(canvas: Image.Image, scene: ObjectScene, outline_only: bool) -> None:
    for obj in scene.objects:
        if isinstance(obj, SceneObject):
            draw_shape(canvas, obj, outline_only)
        else:
            _paste_thing(canvas, obj, outline_only)


def _paste_thing(canvas: Image.Image, thing: Thing, outline_only: bool) -> None:
    """Alpha-composite the thing's picture, centred on the object (sketch: only the edge of its silhouette)."""
    side = canvas.size[0]
    box = max(2, round(2 * THING_RADIUS[thing.size] * side))
    picture = sized_picture(thing.name, box)
    left, top = round(thing.x * side - box / 2), round(thing.y * side - box / 2)
    if outline_only:
        from PIL import ImageFilter

        alpha = picture.getchannel("A").point(lambda a: 255 if a > 127 else 0)
        edge = alpha.filter(ImageFilter.FIND_EDGES)
        ink = Image.new("RGB", (box, box), (60, 60, 60))
        canvas.paste(ink, (left, top), edge)
    else:
        canvas.paste(picture, (left, top), picture)


def _check(n: int, split: str, seed: int, image_size: int, shift: str | None, max_objects: int, fraction: float) -> None:
    check_count("n", n)
    check_choice("split", split, SPLITS, allow_none=False)
    check_seed(seed)
    check_image_size(image_size)
    check_choice("shift", shift, SHIFTS)
    check_object_range(1, max_objects)
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"thing_fraction must be in [0, 1], got {fraction}")


def scene_at(index: int, split: str = "train", seed: int = 0, max_objects: int = DEFAULT_MAX_OBJECTS,
             thing_fraction: float = DEFAULT_THING_FRACTION) -> tuple[str, ObjectScene]:
    """(image id, scene) of image `index` of (seed, split)."""
    rng = objects_rng(seed, split, index, "scene")
    return f"objects-{split}-{index:06d}", sample_object_scene(rng, 1, max_objects, thing_fraction)


def image_text_records(
    n: int,
    split: str = "train",
    seed: int = 0,
    image_size: int = 64,
    shift: str | None = None,
    max_objects: int = DEFAULT_MAX_OBJECTS,
    thing_fraction: float = DEFAULT_THING_FRACTION,
) -> list[ImageTextRecord]:
    """`n` images with 6 captions each; `tags` holds every object's noun, `label` one-object scenes' class."""
    _check(n, split, seed, image_size, shift, max_objects, thing_fraction)
    if max_objects > MAX_OBJECTS:
        raise UserError(f"max_objects must be at most {MAX_OBJECTS}, got {max_objects}")
    records = []
    for index in range(n):
        record_id, scene = scene_at(index, split, seed, max_objects, thing_fraction)
        captions = object_captions(scene, objects_rng(seed, split, index, "captions"))
        records.append(ImageTextRecord(
            id=record_id if shift is None else f"{record_id}-{shift}",
            image=render_object_scene(scene, image_size, shift),
            captions=captions, label=scene.label, split=split, domain="in", tags=sorted(set(scene.nouns)),
        ))
    return records


def vqa_records(
    n_images: int,
    split: str = "train",
    seed: int = 0,
    image_size: int = 64,
    max_objects: int = DEFAULT_MAX_OBJECTS,
    thing_fraction: float = DEFAULT_THING_FRACTION,
) -> list[VQARecord]:
    """Every question about each of `n_images` images (the images of image_text_records)."""
    _check(n_images, split, seed, image_size, None, max_objects, thing_fraction)
    records = []
    for index in range(n_images):
        record_id, scene = scene_at(index, split, seed, max_objects, thing_fraction)
        image = render_object_scene(scene, image_size)
        questions = object_questions(scene, objects_rng(seed, split, index, "questions"))
        for number, item in enumerate(questions):
            records.append(VQARecord(
                question_id=f"{record_id}-q{number}", image_id=record_id, image=image, question=item.question,
                answers=list(item.answers), answer_type=item.answer_type, split=split,
            ))
    return records


def object_classes(classes: str = "things") -> list[str]:
    """Class names of a label set: 'things' (24 nouns), 'shapes' (52 'colour shape'), 'all' (both)."""
    check_choice("classes", classes, CLASS_SETS, allow_none=False)
    return {"things": list(THINGS), "shapes": class_names(), "all": [*THINGS, *class_names()]}[classes]


def classification_records(
    n: int, split: str = "test", seed: int = 0, classes: str = "things", shift: str | None = None, image_size: int = 64
) -> list[ImageTextRecord]:
    """`n` one-object images; image i shows class `object_classes(classes)[i % C]`."""
    _check(n, split, seed, image_size, shift, 1, 0.0)
    names = object_classes(classes)
    records = []
    for index in range(n):
        scene = single_object_scene(objects_rng(seed, split, index, "scene", stream=f"classes-{classes}"),
                                    names[index % len(names)])
        captions = object_captions(scene, objects_rng(seed, split, index, "captions", stream=f"classes-{classes}"))
        record_id = f"objects-{split}-{classes}-{index:06d}"
        records.append(ImageTextRecord(
            id=record_id if shift is None else f"{record_id}-{shift}",
            image=render_object_scene(scene, image_size, shift),
            captions=captions, label=scene.label, split=split, domain="in", tags=list(scene.nouns),
        ))
    return records
