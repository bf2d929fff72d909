"""Evaluation data for the CLIP commands: dataset names -> labelled records -> image features.

`load_classification(spec, split, n, seed)` resolves the DATASET names of `vlbridge eval`:

  shapes                 single-object shapes-world images (vlbridge.data.shapes), 52 seen classes
  shapes-shift:<name>    the same scenes drawn with a shift (sketch, noisy, blur, invert)
  fashion-mnist          official train/test split, 10 classes
  animal-silhouettes     hash-split train/test, 10 animals
  openclipart            hash-split train/test, label = category folder
  imagefolder:PATH       PATH/<class>/<image> (read by vlbridge.data.formats); PATH/train, PATH/test
                         (and PATH/val) when present, otherwise a seeded stratified 80/20 split

and returns a `LabelledImages` (records + the ordered class names their labels index into).
`load_captioned(spec, split, n, seed)` does the same for retrieval (records with captions); it
also takes every image-text spec of `vlbridge.data.formats` (folder:, csv:, jsonl:, coco:,
nocaps:, wds:; their split is chosen inside the spec, e.g. coco:FILE?split=test).
With `n`, a seeded subset of n records is taken (order kept), never "the first n", so class
balance survives datasets stored class by class.

`embed_records(bundle, records)` opens and embeds the images (unreadable ones are skipped and
counted) and returns the features with the indices of the kept records. This is the one place
pixels become features, so a feature cache (vlbridge.data.features) can be routed in here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from vlbridge.data.records import BadImage, ImageTextRecord, SkipCounter, open_image
from vlbridge.errors import UserError
from vlbridge.models.bundle import ClipBundle

log = logging.getLogger(__name__)

SHAPES_DEFAULT_N = {"train": 2080, "val": 520, "test": 520}  # 40 / 10 / 10 images per seen class
EMBEDDED_DATASETS = ("fashion-mnist", "animal-silhouettes", "openclipart")  # read by vlbridge.data.embedded
FOLDER_TEST_FRACTION = 0.2  # share of an unsplit image folder used as "test"
DATASET_HELP = (
    "shapes, shapes-shift:<sketch|noisy|blur|invert>, fashion-mnist, animal-silhouettes, openclipart, "
    "imagefolder:PATH"
)


@dataclass
class LabelledImages:
    """Records of one split of a classification dataset, with the class list their labels index."""

    name: str  # the DATASET spec it came from
    split: str  # "train" / "val" / "test"
    records: list[ImageTextRecord]  # each with .label in classnames
    classnames: list[str] = field(default_factory=list)  # label order shared by all splits

    def labels(self, kept: list[int] | None = None) -> torch.Tensor:
        """(N,) class indices of the records (or of records[kept])."""
        index = {name: number for number, name in enumerate(self.classnames)}
        chosen = self.records if kept is None else [self.records[i] for i in kept]
        return torch.tensor([index[record.label] for record in chosen], dtype=torch.long)


def load_classification(spec: str, split: str, n: int | None = None, seed: int = 0) -> LabelledImages:
    """The `split` of dataset `spec` as labelled records (see the module docstring for names)."""
    kind, _, argument = spec.partition(":")
    if kind in ("shapes", "shapes-shift"):
        records, classnames = _shapes_classification(kind, argument, split, n, seed)
    elif kind in EMBEDDED_DATASETS and not argument:
        records, classnames = _embedded_classification(kind, split, seed)
        records = seeded_subset(records, n, seed)
    elif kind == "imagefolder" and argument:
        records, classnames = _imagefolder_classification(argument, split, seed)
        records = seeded_subset(records, n, seed)
    else:
        raise UserError(f"unknown dataset {spec!r}; expected one of {DATASET_HELP}")
    if not records:
        raise UserError(f"dataset {spec!r} has no {split} images")
    unknown = sorted({record.label for record in records} - set(classnames))
    if unknown:
        raise UserError(f"dataset {spec!r}: labels {unknown[:3]} are not in its class list")
    return LabelledImages(spec, split, records, list(classnames))


def load_captioned(spec: str, split: str, n: int | None = None, seed: int = 0) -> list[ImageTextRecord]:
    """Records of `split` with at least one caption each, for retrieval."""
    kind, _, argument = spec.partition(":")
    if kind in ("shapes", "shapes-shift"):
        from vlbridge.data import shapes

        shift = _shapes_shift(kind, argument)
        records = shapes.image_text_records(n or SHAPES_DEFAULT_N[split], split, seed, shift=shift)
    elif kind in EMBEDDED_DATASETS or kind == "imagefolder":
        records = load_classification(spec, split, n, seed).records
    else:  # any other image-text spec of vlbridge.data.formats (folder:, csv:, jsonl:, coco:, nocaps:, wds:)
        from vlbridge.data import formats

        records = seeded_subset(list(formats.load_image_text(spec)), n, seed)
    captioned = [record for record in records if record.captions]
    if not captioned:
        raise UserError(f"dataset {spec!r} has no captions; retrieval needs image-caption pairs")
    return captioned


def seeded_subset(records: list, n: int | None, seed: int) -> list:
    """`n` records chosen by a seeded permutation, in their original order (all when n is None)."""
    if n is None or n >= len(records):
        return records
    if n < 1:
        raise UserError(f"--n must be a positive number of images, got {n}")
    chosen = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed))[:n]
    return [records[i] for i in sorted(chosen.tolist())]


def embed_records(
    bundle: ClipBundle, records: list[ImageTextRecord], batch_size: int = 64, desc: str = "embedding images"
) -> tuple[torch.Tensor, list[int]]:
    """((K, E) unit image embeddings, indices of the K records whose image could be opened)."""
    skipped = SkipCounter(desc)
    chunks, kept = [], []
    for start in tqdm(range(0, len(records), batch_size), desc=desc, unit="batch", leave=False, disable=None):
        images = []
        for offset, record in enumerate(records[start : start + batch_size]):
            try:
                images.append(open_image(record.image))
            except BadImage as err:
                skipped.skip(str(err).split(":")[0], record.id)
                continue
            kept.append(start + offset)
        if images:
            chunks.append(bundle.embed_images(images, batch_size=batch_size))  # (b, E)
    if skipped.total:
        log.warning(skipped.summary())
    if not chunks:
        raise UserError(f"{desc}: none of the {len(records)} images could be opened")
    return torch.cat(chunks), kept


def _shapes_shift(kind: str, argument: str) -> str | None:
    from vlbridge.data.shapes import SHIFTS

    if kind == "shapes":
        if argument:
            raise UserError(f"dataset 'shapes' takes no argument, got 'shapes:{argument}' (did you mean shapes-shift:?)")
        return None
    if argument not in SHIFTS:
        raise UserError(f"shapes-shift:<name> needs a shift in {', '.join(SHIFTS)}, got {argument!r}")
    return argument


def _shapes_classification(kind: str, argument: str, split: str, n: int | None, seed: int):
    from vlbridge.data import shapes

    shift = _shapes_shift(kind, argument)
    records = shapes.classification_records(n or SHAPES_DEFAULT_N[split], split, seed, shift=shift)
    return records, shapes.class_names()


def _embedded_classification(kind: str, split: str, seed: int):
    """(records of `split`, class names in label order) of an embedded data set."""
    from vlbridge.data import embedded

    if split not in embedded.SPLITS:
        raise UserError(f"dataset {kind!r} has splits {', '.join(embedded.SPLITS)}, not {split!r}")
    if kind == "fashion-mnist":
        return embedded.fashion_mnist_records(split), list(embedded.FASHION_MNIST_CLASSES)
    if kind == "animal-silhouettes":
        return embedded.animal_silhouette_records(split=split, seed=seed), list(embedded.ANIMAL_SILHOUETTE_CLASSES)
    every_record = embedded.openclipart_records(split=None, seed=seed)  # classes = all category folders
    return [r for r in every_record if r.split == split], sorted({r.label for r in every_record})


def _imagefolder_classification(root: str, split: str, seed: int):
    """Records of PATH/<split>/<class>/* when split folders exist, else a seeded stratified split of PATH."""
    from vlbridge.data.formats_simple import read_imagefolder

    skips = SkipCounter(f"imagefolder:{root}")
    every_record = read_imagefolder(root, skips)  # all splits; .split is set only when split folders exist
    if skips.total:
        log.warning(skips.summary())
    classnames = sorted({record.label for record in every_record})
    if every_record[0].split is not None:
        present = sorted({record.split for record in every_record})
        if split not in present:
            raise UserError(f"imagefolder:{root} has split folders {present} but no {split!r} folder")
        return [record for record in every_record if record.split == split], classnames
    if split == "val":
        raise UserError(f"imagefolder:{root} has no split folders, so no val split (only a seeded train/test split)")
    from vlbridge.evaluation.linear_probe import stratified_split

    index = {name: number for number, name in enumerate(classnames)}
    labels = torch.tensor([index[record.label] for record in every_record])
    train_idx, test_idx = stratified_split(labels, FOLDER_TEST_FRACTION, seed)
    chosen = train_idx if split == "train" else test_idx
    return [every_record[i] for i in chosen.tolist()], classnames
