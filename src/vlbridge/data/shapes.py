"""The procedural shapes world: seeded, unlimited images with captions, VQA and class labels.

Each image holds 1-3 coloured shapes (8 shapes x 8 colours, small / large, in a 3x3 grid of
positions) on a light background. For every image this module gives 6 accurate captions,
unambiguous VQA questions with 10 human-like answers, a "<colour> <shape>" class label when
there is a single object, and the same scene under distribution shifts (`SHIFTS`).

Use it in memory:
    image_text_records(n, split, seed, domain, image_size, shift) -> [ImageTextRecord]
    classification_records(n, split, seed, shift, ...)            -> single objects, label set
    vqa_records(n_images, split, seed, domain, image_size)        -> [VQARecord]
or on disk with `write_dataset` (`vlbridge data shapes`): DIR/images/*.png,
DIR/captions.jsonl, DIR/vqa.jsonl and DIR/shapes.json, byte-identical for the same seed.

The i-th image of a (seed, split, domain) is a pure function of that key (never of how many
images were made). The train split is in-domain only: `HELD_OUT_COMBOS` never appear there,
in pictures, captions or questions. val/test take a domain ("in" / "near" / "out", see
`shapes_scene`) or, with domain=None, cycle through them by index (NoCaps-like mix).
Scene vocabulary and sampling live in `shapes_scene`, drawing in `shapes_render`,
wording in `shapes_text`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from vlbridge.config import to_dict
from vlbridge.data.records import ImageTextRecord, VQARecord
from vlbridge.data.shapes_render import SHIFTS, render_scene
from vlbridge.data.shapes_scene import (
    ALL_COMBOS,
    BACKGROUNDS,
    COLOURS,
    DOMAINS,
    HELD_OUT_COMBOS,
    MAX_OBJECTS,
    SEEN_COMBOS,
    SHAPES,
    SIZES,
    SPLITS,
    Scene,
    SceneObject,
    check_choice,
    check_count,
    check_image_size,
    check_object_range,
    check_seed,
    class_names,
    sample_scene,
    scene_rng,
)
from vlbridge.data.shapes_text import ANSWER_TYPES, QuestionItem, scene_captions, scene_questions
from vlbridge.errors import UserError
from vlbridge.io import atomic_open, atomic_write_text

__all__ = [
    "ALL_COMBOS", "ANSWER_TYPES", "BACKGROUNDS", "COLOURS", "DOMAINS", "HELD_OUT_COMBOS", "MAX_OBJECTS",
    "SEEN_COMBOS", "SHAPES", "SHIFTS", "SIZES", "SPLITS", "Scene", "SceneObject", "ShapesConfig",
    "class_names", "classification_records", "image_text_records", "render_scene", "scene_at", "split_counts",
    "vqa_records", "write_dataset",
]

@dataclass
class ShapesConfig:
    """How a shapes-world dataset is generated (saved as DIR/shapes.json by write_dataset)."""

    image_size: int = 64  # side of the square RGB images, in pixels
    min_objects: int = 1  # fewest shapes per image (near-domain images always have >= 2)
    max_objects: int = 3  # most shapes per image (at most MAX_OBJECTS = 6)
    seed: int = 0  # master seed; image i of a split depends only on (seed, split, domain, i)
    supersample: int = 2  # draw at this multiple of image_size, then box-downsample (anti-aliasing)
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test share of n

    def validate(self) -> None:
        """UserError naming the first bad field."""
        check_image_size(self.image_size)
        check_object_range(self.min_objects, self.max_objects)
        check_seed(self.seed)
        if not 1 <= self.supersample <= 8:
            raise UserError(f"supersample must be between 1 and 8, got {self.supersample}")
        split_counts(1, dict(zip(SPLITS, self.split_fractions)))


def image_domain(split: str, domain: str | None, index: int, max_objects: int = 3) -> str:
    """The domain of image `index`: train is always "in"; val/test cycle through DOMAINS if None."""
    check_choice("split", split, SPLITS, allow_none=False)
    check_choice("domain", domain, DOMAINS)
    if split == "train":
        if domain not in (None, "in"):
            raise UserError(f"the train split is in-domain only; got domain={domain!r} (use val or test)")
        return "in"
    if domain is not None:
        if domain == "near" and max_objects < 2:
            raise UserError(f"near-domain images need 2 or more objects, but max_objects={max_objects}")
        return domain
    cycle = DOMAINS if max_objects >= 2 else ("in", "out")
    return cycle[index % len(cycle)]


def image_id(split: str, domain: str, index: int) -> str:
    return f"{split}-{domain}-{index:06d}"


def scene_at(
    index: int,
    split: str = "train",
    seed: int = 0,
    domain: str | None = None,
    min_objects: int = 1,
    max_objects: int = 3,
) -> tuple[str, Scene]:
    """(image id, scene) of image `index` of (seed, split, domain): the same for every caller."""
    resolved = image_domain(split, domain, index, max_objects)
    rng = scene_rng(seed, split, resolved, index, "scene")
    return image_id(split, resolved, index), sample_scene(rng, resolved, min_objects, max_objects)


def _shifted_id(record_id: str, shift: str | None) -> str:
    return record_id if shift is None else f"{record_id}-{shift}"


def _check_request(n: int, split: str, seed: int, domain: str | None, image_size: int, shift: str | None) -> None:
    check_count("n", n)
    check_choice("split", split, SPLITS, allow_none=False)
    check_choice("domain", domain, DOMAINS)
    check_seed(seed)
    check_image_size(image_size)
    check_choice("shift", shift, SHIFTS)


def image_text_records(
    n: int,
    split: str = "train",
    seed: int = 0,
    domain: str | None = None,
    image_size: int = 64,
    shift: str | None = None,
    max_objects: int = 3,
) -> list[ImageTextRecord]:
    """`n` images of `split` with 6 captions each, as in-memory PIL images.

    With a `shift` the same scenes are drawn shifted and ids get a "-<shift>" suffix.
    `label` is the class name for single-object images and None otherwise.
    """
    _check_request(n, split, seed, domain, image_size, shift)
    check_object_range(1, max_objects)
    records = []
    for index in range(n):
        record_id, scene = scene_at(index, split, seed, domain, 1, max_objects)
        captions = scene_captions(scene, scene_rng(seed, split, scene.domain, index, "captions"))
        records.append(
            ImageTextRecord(
                id=_shifted_id(record_id, shift),
                image=render_scene(scene, image_size, shift),
                captions=captions,
                label=scene.label,
                split=split,
                domain=scene.domain,
            )
        )
    return records


def classification_records(
    n: int,
    split: str = "test",
    seed: int = 0,
    shift: str | None = None,
    image_size: int = 64,
    include_held_out: bool = False,
) -> list[ImageTextRecord]:
    """`n` single-object images; image i shows class `class_names(include_held_out)[i % C]`.

    Held-out classes never go into the train split (that would break the domains).
    """
    _check_request(n, split, seed, None, image_size, shift)
    if include_held_out and split == "train":
        raise UserError("held-out colour-shape combinations never appear in the train split; use val or test")
    combos = ALL_COMBOS if include_held_out else SEEN_COMBOS
    stream = "classes-all" if include_held_out else "classes-seen"
    records = []
    for index in range(n):
        combo = combos[index % len(combos)]
        scene = sample_scene(scene_rng(seed, split, stream, index, "scene"), "in", combos=[combo])
        captions = scene_captions(scene, scene_rng(seed, split, stream, index, "captions"))
        records.append(
            ImageTextRecord(
                id=_shifted_id(f"{split}-{stream}-{index:06d}", shift),
                image=render_scene(scene, image_size, shift),
                captions=captions,
                label=scene.label,
                split=split,
                domain=scene.domain,
            )
        )
    return records


def distractor_pool(domain: str) -> tuple[tuple[str, str], ...]:
    """Combos that "is there a ...?" questions may name for an image of `domain`."""
    return {"in": SEEN_COMBOS, "out": HELD_OUT_COMBOS}.get(domain, ALL_COMBOS)


def image_questions(scene: Scene, seed: int, split: str, index: int) -> list[QuestionItem]:
    """The VQA questions of image `index` (its own random stream, independent of captions)."""
    rng = scene_rng(seed, split, scene.domain, index, "questions")
    return scene_questions(scene, rng, distractor_pool(scene.domain))


def vqa_records(
    n_images: int,
    split: str = "train",
    seed: int = 0,
    domain: str | None = None,
    image_size: int = 64,
    max_objects: int = 3,
) -> list[VQARecord]:
    """Several questions about each of `n_images` images (the same images as image_text_records).

    `question_id` is "<image id>-q<j>"; all questions of one image share its PIL image.
    """
    _check_request(n_images, split, seed, domain, image_size, None)
    check_object_range(1, max_objects)
    records = []
    for index in range(n_images):
        record_id, scene = scene_at(index, split, seed, domain, 1, max_objects)
        image = render_scene(scene, image_size)
        for number, item in enumerate(image_questions(scene, seed, split, index)):
            records.append(
                VQARecord(
                    question_id=f"{record_id}-q{number}",
                    image_id=record_id,
                    image=image,
                    question=item.question,
                    answers=list(item.answers),
                    answer_type=item.answer_type,
                    split=split,
                )
            )
    return records


def split_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Split `n` images by `fractions` (summing to 1) with largest remainders; keys kept in SPLITS order."""
    for name, fraction in fractions.items():
        check_choice("split", name, SPLITS, allow_none=False)
        if not isinstance(fraction, (int, float)) or fraction < 0:
            raise UserError(f"split fraction of {name} must be a number >= 0, got {fraction!r}")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise UserError(f"split fractions must sum to 1, got {total:g} ({fractions})")
    names = [name for name in SPLITS if name in fractions]
    exact = {name: n * fractions[name] for name in names}
    counts = {name: int(exact[name]) for name in names}
    by_remainder = sorted(names, key=lambda name: (-(exact[name] - counts[name]), SPLITS.index(name)))
    for name in by_remainder[: n - sum(counts.values())]:
        counts[name] += 1
    return counts


def write_dataset(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    image_size: int = 64,
    splits: Mapping[str, float] | Sequence[float] | None = None,
    max_objects: int = 3,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write `n` images, split by `splits` fractions (default 0.8/0.1/0.1), under `out_dir`.

    Files: images/<id>.png, captions.jsonl (id, image, captions, label, split, domain),
    vqa.jsonl (question_id, image_id, image, question, answers, answer_type, split) and
    shapes.json (the generation config and vocabulary). The same arguments always give
    byte-identical files. Refuses to replace an earlier dataset unless `overwrite`.
    Returns counts: images, captions, questions, per split, per domain, single-object images.
    """
    check_count("n", n)
    if n == 0:
        raise UserError("n must be at least 1 image, got 0")
    fractions = split_fractions(splits)
    config = ShapesConfig(
        image_size=image_size,
        max_objects=max_objects,
        seed=seed,
        split_fractions=tuple(fractions[name] for name in SPLITS),
    )
    config.validate()
    counts = split_counts(n, fractions)
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    summary = {
        "out_dir": str(out),
        "images": 0,
        "captions": 0,
        "questions": 0,
        "splits": counts,
        "domains": {name: 0 for name in DOMAINS},
        "single_object": 0,
    }
    bar = tqdm(total=n, desc="shapes", unit="img", disable=None if progress else True)
    with atomic_open(out / "captions.jsonl", "w", newline="\n") as captions_file, atomic_open(
        out / "vqa.jsonl", "w", newline="\n"
    ) as vqa_file:
        for split, count in counts.items():
            for index in range(count):
                _write_image(out, config, split, index, captions_file, vqa_file, summary)
                bar.update(1)
    bar.close()
    atomic_write_text(out / "shapes.json", json.dumps(_dataset_card(config, counts), indent=2) + "\n")
    return summary


def split_fractions(splits: Mapping[str, float] | Sequence[float] | None) -> dict[str, float]:
    """{split: fraction} from a mapping, a (train, val, test) sequence, or None (0.8/0.1/0.1)."""
    if splits is None:
        splits = ShapesConfig().split_fractions
    if isinstance(splits, Mapping):
        unknown = [name for name in splits if name not in SPLITS]
        if unknown:
            raise UserError(f"split names must be among {', '.join(SPLITS)}; got {unknown[0]!r}")
        return {name: splits.get(name, 0.0) for name in SPLITS}
    values = list(splits)
    if len(values) != len(SPLITS):
        raise UserError(f"expected {len(SPLITS)} split fractions (train, val, test), got {len(values)}: {values}")
    return dict(zip(SPLITS, values))


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a directory")
    earlier = [name for name in ("captions.jsonl", "vqa.jsonl", "shapes.json", "images") if (out / name).exists()]
    if earlier and not overwrite:
        raise UserError(f"{out} already holds a dataset ({earlier[0]}); choose another directory or use --overwrite")
    if (out / "images").is_dir():
        for old_image in (out / "images").glob("*.png"):
            old_image.unlink()
    (out / "images").mkdir(parents=True, exist_ok=True)


def _write_image(out: Path, config: ShapesConfig, split: str, index: int, captions_file, vqa_file, summary) -> None:
    """Render, save and describe image `index` of `split`; append its JSON lines; count it."""
    record_id, scene = scene_at(index, split, config.seed, None, config.min_objects, config.max_objects)
    relative_path = f"images/{record_id}.png"
    image = render_scene(scene, config.image_size, supersample=config.supersample)
    image.save(out / relative_path, format="PNG", compress_level=6, optimize=False)
    captions = scene_captions(scene, scene_rng(config.seed, split, scene.domain, index, "captions"))
    line = {
        "id": record_id,
        "image": relative_path,
        "captions": captions,
        "label": scene.label,
        "split": split,
        "domain": scene.domain,
    }
    captions_file.write(json.dumps(line, ensure_ascii=False) + "\n")
    questions = image_questions(scene, config.seed, split, index)
    for number, item in enumerate(questions):
        line = {
            "question_id": f"{record_id}-q{number}",
            "image_id": record_id,
            "image": relative_path,
            "question": item.question,
            "answers": list(item.answers),
            "answer_type": item.answer_type,
            "split": split,
        }
        vqa_file.write(json.dumps(line, ensure_ascii=False) + "\n")
    summary["images"] += 1
    summary["captions"] += len(captions)
    summary["questions"] += len(questions)
    summary["domains"][scene.domain] += 1
    summary["single_object"] += scene.label is not None


def _dataset_card(config: ShapesConfig, counts: dict[str, int]) -> dict:
    """What shapes.json holds: how the dataset was made and its vocabulary."""
    return {
        "generator": "vlbridge.data.shapes",
        "config": {**to_dict(config), "split_fractions": list(config.split_fractions)},
        "splits": counts,
        "shapes": list(SHAPES),
        "colours": list(COLOURS),
        "held_out_combos": [list(combo) for combo in HELD_OUT_COMBOS],
        "domains": {"in": "all objects seen combos", "near": "seen and held-out mixed", "out": "all held out"},
        "val_test_domain_cycle": [image_domain("val", None, index, config.max_objects) for index in range(3)],
    }
