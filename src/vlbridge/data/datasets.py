"""Dataset spec -> records: the one resolver every reader of data in vlbridge goes through.

    data = load_dataset("shapes?shift=sketch", "classification", split="test", n=52)
    data.records      # ImageTextRecord / VQARecord list (a re-iterable stream for wds: without n=)
    data.classnames   # classification: the label order, the same for every split of the dataset
    data.labels()     # (N,) class indices
    data.name         # the spec written back with what it resolved to (cache keys, logs)

Specs follow `vlbridge.data.specs` (`scheme:TARGET?k=v` / `name?k=v`). Tasks:
- "image_text": image-caption records (every scheme and name but vqav2:);
- "vqa": question records (vqav2:, jsonl: of VQA lines, shapes);
- "classification": records with a label, plus the class list. Fixed lists for shapes (the 52
  seen colour-shape classes, single-object images), Fashion-MNIST and the silhouettes; for
  everything else the sorted labels of the whole dataset (all splits, before n=), so train
  and test index the same list. Records without a label are skipped and counted.

The caller's `split`, `n`, `seed` (and `image_size` for the shapes world) fill in options the
spec leaves out (`specs.with_request`). Then, in this order: split (named datasets check it
is one of theirs; stored data keeps the records that carry it; an ImageFolder without split
folders is split 80/20 per class, seeded; data whose records carry no split keeps them all
unless the spec itself asked for one), first=, n= (a seeded subset, `subsets.seeded_subset`).
Shapes-world images without n=: SHAPES_DEFAULT_N for the split (train when none is given).

Bad samples are skipped and counted in `skips` (a SkipCounter; one is made and its summary
logged when none is given); a bad file or spec raises one UserError / BadInputError.
`load_image_text`, `load_vqa` and `load_classification` are the record lists of one task.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

import torch

from vlbridge.data import formats_coco, formats_simple, formats_wds
from vlbridge.data.formats_common import NO_LABEL
from vlbridge.data.records import ImageTextRecord, SkipCounter, VQARecord
from vlbridge.data.specs import NAMED, DataSpec, parse_spec, with_request
from vlbridge.data.subsets import seeded_subset, stratified_split
from vlbridge.errors import UserError

__all__ = ["SHAPES_DEFAULT_N", "TASKS", "Dataset", "load_classification", "load_dataset", "load_image_text", "load_vqa"]

log = logging.getLogger(__name__)

TASKS = ("image_text", "vqa", "classification")  # what load_dataset can read
SHAPES_DEFAULT_N = {"train": 2080, "val": 520, "test": 520}  # shapes images without n=: 40 / 10 / 10 per seen class
SHAPES_DEFAULT_SPLIT = "train"  # shapes split without split=
SHAPES_DEFAULT_IMAGE_SIZE = 64  # shapes image side without image_size=, pixels
SHAPES_DEFAULT_MAX_OBJECTS = 3  # most shapes per image without max_objects=
FOLDER_TEST_FRACTION = 0.2  # share of each class of an ImageFolder without split folders that is "test"
SEPARATORS = {"\\t": "\t", "tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}  # csv sep= spellings
VQA_SPECS = "vqav2:QUESTIONS?..., jsonl:FILE of VQA lines, shapes or objects"


@dataclass
class Dataset:
    """The records a spec resolved to, with what they are."""

    name: str  # the spec written back with its resolved options (stable: cache keys)
    split: str | None  # the split read (None: the whole dataset)
    records: list | Iterable  # ImageTextRecord / VQARecord; a re-iterable stream for wds: without n=
    classnames: list[str] = field(default_factory=list)  # classification: label order shared by all splits

    def record_list(self) -> list:
        """The records as a list (a stream is read once), a UserError when there are none."""
        records = list(self.records)
        if not records:
            where = f" for split {self.split!r}" if self.split else ""
            raise UserError(f"dataset {self.name!r} has no records{where}")
        return records

    def labels(self, kept: list[int] | None = None) -> torch.Tensor:
        """(N,) class indices of the records (or of records[kept])."""
        index = {name: number for number, name in enumerate(self.classnames)}
        chosen = self.records if kept is None else [self.records[i] for i in kept]
        return torch.tensor([index[record.label] for record in chosen], dtype=torch.long)


def load_dataset(
    spec: str,
    task: str = "image_text",
    *,
    split: str | None = None,
    n: int | None = None,
    seed: int | None = None,
    image_size: int | None = None,
    skips: SkipCounter | None = None,
) -> Dataset:
    """The records of `spec` for `task` (see the module docstring for every rule)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    given = parse_spec(spec)
    parsed = with_request(given, split, n, seed, image_size)
    own_counter = skips is None
    skips = SkipCounter(spec) if skips is None else skips
    if parsed.scheme == "shapes":
        parsed, records, classnames = _shapes(parsed, task)
    elif parsed.scheme == "objects":
        parsed, records, classnames = _objects(parsed, task)
    elif parsed.scheme in NAMED:
        records, classnames = _embedded(parsed, task, skips)
        records = _take(records, parsed)
    else:
        records, classnames = _stored(parsed, task, skips, strict_split="split" in given.options)
        records = _take(records, parsed)
    if own_counter and skips.total:
        log.warning("%s", skips.summary())
    if isinstance(records, list) and not records:
        raise UserError(f"dataset {parsed.text()!r} holds no usable records")
    name = parsed.with_options(seed=parsed.integer("seed", 0)).text()
    return Dataset(name, parsed.options.get("split"), records, classnames)


def load_image_text(spec: str, skips: SkipCounter | None = None) -> list[ImageTextRecord] | Iterable[ImageTextRecord]:
    """Image-caption records of `spec` (a list; for wds: a re-iterable stream)."""
    return load_dataset(spec, "image_text", skips=skips).records


def load_vqa(spec: str, skips: SkipCounter | None = None) -> list[VQARecord]:
    """VQA records of `spec`: vqav2:QUESTIONS?..., jsonl:FILE of VQA lines, or shapes."""
    return load_dataset(spec, "vqa", skips=skips).records


def load_classification(spec: str, skips: SkipCounter | None = None) -> list[ImageTextRecord]:
    """Records of `spec` that carry a class label (records without one are skipped and counted)."""
    return load_dataset(spec, "classification", skips=skips).records


# ------------------------------------------------------------------------------ the shapes world
def _world_options(spec: DataSpec) -> tuple[DataSpec, str, str | None, int, int, int]:
    """(spec with its defaults written in, split, shift, n, seed, image_size) of a procedural world.

    The shapes world and the objects world share their splits, shifts and defaults.
    """
    from vlbridge.data.shapes_render import SHIFTS
    from vlbridge.data.shapes_scene import SPLITS

    name = spec.scheme
    split = spec.options.get("split", SHAPES_DEFAULT_SPLIT)
    if split not in SPLITS:
        raise UserError(f"dataset {name!r} has splits {', '.join(SPLITS)}; got split={split!r}")
    shift = spec.options.get("shift")
    if shift is not None and shift not in SHIFTS:
        raise UserError(f"{name} option shift= expects one of {', '.join(SHIFTS)}; got {shift!r}")
    n = spec.count("n") or SHAPES_DEFAULT_N[split]
    seed = spec.integer("seed", 0)
    image_size = spec.integer("image_size", SHAPES_DEFAULT_IMAGE_SIZE)
    return spec.with_options(split=split, n=n, seed=seed, image_size=image_size), split, shift, n, seed, image_size


def _shapes(spec: DataSpec, task: str) -> tuple[DataSpec, list, list[str]]:
    """(spec with its defaults written in, records, class names) of the procedural shapes world."""
    from vlbridge.data import shapes

    spec, split, shift, n, seed, image_size = _world_options(spec)
    domain = spec.options.get("domain") or None
    max_objects = spec.integer("max_objects", SHAPES_DEFAULT_MAX_OBJECTS)
    if task == "classification":
        if "domain" in spec.options or "max_objects" in spec.options:
            raise UserError(f"{spec.text()!r}: the classification view holds single objects of the seen classes; "
                            "domain= and max_objects= do not apply")
        records = shapes.classification_records(n, split, seed, shift=shift, image_size=image_size)
        return spec, records, shapes.class_names()
    if task == "vqa":
        if shift is not None:
            raise UserError(f"{spec.text()!r}: VQA questions are asked about unshifted images; drop shift=")
        return spec, shapes.vqa_records(n, split, seed, domain, image_size, max_objects), []
    return spec, shapes.image_text_records(n, split, seed, domain, image_size, shift, max_objects), []


# ------------------------------------------------------------------------------ the objects world
def _objects(spec: DataSpec, task: str) -> tuple[DataSpec, list, list[str]]:
    """(spec with its defaults written in, records, class names) of the objects world (shapes + things)."""
    from vlbridge.data import objects

    spec, split, shift, n, seed, image_size = _world_options(spec)
    if task == "classification":
        if "max_objects" in spec.options or "things" in spec.options:
            raise UserError(f"{spec.text()!r}: the classification view holds single objects of one label set; "
                            "max_objects= and things= do not apply (choose the set with classes=)")
        classes = spec.options.get("classes", "things")
        records = objects.classification_records(n, split, seed, classes, shift, image_size)
        return spec, records, objects.object_classes(classes)
    if "classes" in spec.options:
        raise UserError(f"{spec.text()!r}: classes= chooses the classification view's labels; drop it here")
    max_objects = spec.integer("max_objects", objects.DEFAULT_MAX_OBJECTS)
    things = _fraction(spec, "things", objects.DEFAULT_THING_FRACTION)
    if task == "vqa":
        if shift is not None:
            raise UserError(f"{spec.text()!r}: VQA questions are asked about unshifted images; drop shift=")
        return spec, objects.vqa_records(n, split, seed, image_size, max_objects, things), []
    return spec, objects.image_text_records(n, split, seed, image_size, shift, max_objects, things), []


def _fraction(spec: DataSpec, name: str, default: float) -> float:
    value = spec.options.get(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"{spec.text()!r}: {name}= expects a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise UserError(f"{spec.text()!r}: {name}= expects a number between 0 and 1, got {value!r}")
    return number


# ------------------------------------------------------------------------------ embedded sets
def _embedded(spec: DataSpec, task: str, skips: SkipCounter) -> tuple[list, list[str]]:
    """(records of the split, class names) of Twemoji, openclipart, Fashion-MNIST or the silhouettes."""
    from vlbridge.data import embedded

    if task == "vqa":
        raise UserError(f"dataset {spec.scheme!r} has no VQA questions; VQA specs are {VQA_SPECS}")
    split = spec.options.get("split")
    if split is not None and split not in embedded.SPLITS:
        raise UserError(f"dataset {spec.scheme!r} has splits {', '.join(embedded.SPLITS)}; got split={split!r}")
    fixed = {"fashion-mnist": embedded.FASHION_MNIST_CLASSES, "animal-silhouettes": embedded.ANIMAL_SILHOUETTE_CLASSES}
    seed = spec.integer("seed", 0)
    if task != "classification" or spec.scheme in fixed:
        records = _read_embedded(spec.scheme, split, seed, spec.count("first"))
        classnames = list(fixed.get(spec.scheme, ()))
    else:  # the class list is every label of the dataset, whichever split is read
        every_record = _read_embedded(spec.scheme, None, seed, None)
        classnames = sorted({record.label for record in every_record if record.label})
        records = [record for record in every_record if split is None or record.split == split]
    if task == "classification":
        records = _labelled(records, skips, spec)
    return records, classnames


def _read_embedded(name: str, split: str | None, seed: int, first: int | None) -> list[ImageTextRecord]:
    from vlbridge.data import embedded

    if name == "fashion-mnist":  # the official split; the whole dataset is train then test
        splits = [split] if split else list(embedded.SPLITS)
        return [record for part in splits for record in embedded.fashion_mnist_records(part, n=first)]
    readers = {
        "twemoji": embedded.twemoji_records,
        "openclipart": embedded.openclipart_records,
        "animal-silhouettes": embedded.animal_silhouette_records,
    }
    return readers[name](split=split, seed=seed, n=first)


# ------------------------------------------------------------------------------ data on disk
def _stored(spec: DataSpec, task: str, skips: SkipCounter, strict_split: bool) -> tuple[list | Iterable, list[str]]:
    """(records of the requested split, class names) of a scheme:TARGET spec."""
    if task == "vqa":
        records = _read_vqa(spec, skips)
    elif spec.scheme == "vqav2":
        raise UserError(f"dataset spec {spec.text()!r} holds VQA questions, not captions; use it where VQA data is expected")
    else:
        records = _read_image_text(spec, skips)
    classnames: list[str] = []
    if task == "classification":
        records = _labelled(list(records), skips, spec)
        classnames = sorted({record.label for record in records})
    return _select_split(records, spec, strict_split), classnames


def _read_vqa(spec: DataSpec, skips: SkipCounter) -> list[VQARecord]:
    options = spec.options
    if spec.scheme == "vqav2":
        return formats_coco.read_vqav2(
            spec.target, skips, options.get("annotations"), options.get("images"), options.get("subtype")
        )
    if spec.scheme == "jsonl":
        return formats_simple.read_vqa_jsonl(spec.target, skips)
    raise UserError(f"dataset spec {spec.text()!r} has no VQA questions; VQA specs are {VQA_SPECS}")


def _read_image_text(spec: DataSpec, skips: SkipCounter) -> list[ImageTextRecord] | Iterable[ImageTextRecord]:
    options, target = spec.options, spec.target
    if spec.scheme == "wds":
        by_rank = options.get("by_rank", "0").lower() not in ("", "0", "false", "no")
        return formats_wds.wds_records(target, skips, by_rank=by_rank)
    readers = {
        "folder": lambda: formats_simple.read_folder(target, skips),
        "csv": lambda: formats_simple.read_csv(
            target, skips, options.get("image"), options.get("caption"), _separator(options.get("sep"))
        ),
        "jsonl": lambda: formats_simple.read_jsonl(target, skips),
        "coco": lambda: formats_coco.read_coco(target, skips, options.get("images"), options.get("karpathy")),
        "nocaps": lambda: formats_coco.read_nocaps(target, skips, options.get("images")),
        "imagefolder": lambda: formats_simple.read_imagefolder(target, skips),
    }
    return readers[spec.scheme]()


def _separator(value: str | None) -> str | None:
    if value is None:
        return None
    value = SEPARATORS.get(value, value)
    if len(value) != 1:
        raise UserError(f"csv option sep= expects one character (or \\t, tab, comma, semicolon, pipe), got {value!r}")
    return value


def _labelled(records: list, skips: SkipCounter, spec: DataSpec) -> list:
    labelled = []
    for record in records:
        if record.label:
            labelled.append(record)
        else:
            skips.skip(NO_LABEL, record.id)
    if not labelled:
        raise UserError(f"dataset spec {spec.text()!r} holds no labelled images; classification needs a label per image")
    return labelled


# ------------------------------------------------------------------------------ split, first=, n=
def _select_split(records: list | Iterable, spec: DataSpec, strict: bool) -> list | Iterable:
    """The records of the spec's split= (see the module docstring)."""
    split = spec.options.get("split")
    if split is None:
        return records
    if not isinstance(records, list):
        return RecordStream(records, split=split)
    present = sorted({record.split for record in records if record.split})
    if spec.scheme == "imagefolder" and not present:
        return _held_out_split(records, spec, split)
    if not present:
        if strict:
            hint = " needs karpathy=FILE (no split known)" if spec.scheme == "coco" else ": its records carry no split"
            raise UserError(f"dataset spec {spec.text()!r}: split={split}{hint}")
        log.info("%s: records carry no split; split %s keeps them all", spec.text(), split)
        return records
    chosen = [record for record in records if record.split == split]
    if not chosen:
        raise UserError(f"dataset {spec.text()!r} has no records for split {split!r}; splits present: {present}")
    return chosen


def _held_out_split(records: list, spec: DataSpec, split: str) -> list:
    """train / test of an ImageFolder without split folders: a seeded stratified 80/20 split."""
    if split not in ("train", "test"):
        raise UserError(f"imagefolder:{spec.target} has no split folders, so only a seeded train/test split, "
                        f"not {split!r}")
    classnames = sorted({record.label for record in records})
    index = {name: number for number, name in enumerate(classnames)}
    labels = torch.tensor([index[record.label] for record in records])
    train_idx, test_idx = stratified_split(labels, FOLDER_TEST_FRACTION, spec.integer("seed", 0))
    return [records[i] for i in (train_idx if split == "train" else test_idx).tolist()]


def _take(records: list | Iterable, spec: DataSpec) -> list | Iterable:
    """first= then n= of the spec (n= reads a stream into a list)."""
    first = spec.count("first")
    if first is not None:
        records = records[:first] if isinstance(records, list) else RecordStream(records, first=first)
    n = spec.count("n")
    if n is not None:
        records = seeded_subset(list(records), n, spec.integer("seed", 0))
    return records


class RecordStream:
    """A re-iterable view of a stream: the records of `split` (and those that carry none), at most `first`."""

    def __init__(self, source: Iterable, split: str | None = None, first: int | None = None):
        self.source = source  # re-iterable: every iter() is a fresh pass
        self.split = split  # records of another split are dropped
        self.first = first  # at most this many records per pass (None: all)

    def __iter__(self) -> Iterator:
        chosen = (record for record in self.source if self.split is None or record.split in (None, self.split))
        return islice(chosen, self.first)
