"""The record types every reader returns, image opening, and the skip counter.

All dataset readers (shapes world, embedded datasets, real formats) produce the same two
record types, so training and evaluation never care where data came from:

- `ImageTextRecord`: one image with its captions (and optional class label, split, domain).
- `VQARecord`: one question about one image with its 10 human answers.

Images are referenced lazily (`ImageRef`: a path, raw bytes, an in-memory PIL image, or a
`TarMember`: the place of an image inside a local webdataset shard, read only when opened)
and opened with `open_image`, which always returns RGB (RGBA composited onto white). Files
larger than `MAX_IMAGE_PIXELS` are refused from their header, before decoding: openclipart
ships a few 170-600-megapixel PNGs that would take seconds to minutes and gigabytes each.

Bad samples never kill a run: readers call `SkipCounter.skip(reason, where)` and move on;
the count is reported at the end.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class TarMember:
    """One member of an uncompressed local tar file, read when the image is opened (bytes never held).

    Equal to the bytes it refers to (and to another TarMember with the same bytes), so records
    read lazily compare equal to records read with their bytes.
    """

    path: str  # the tar file
    offset: int  # byte offset of the member's data in the file
    size: int  # the member's size in bytes

    def read_bytes(self) -> bytes:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(self.size)
        if len(data) != self.size:
            raise BadImage(f"cannot decode image {self}: tar member cut short ({len(data)} of {self.size} bytes)")
        return data

    def __eq__(self, other) -> bool:
        if isinstance(other, TarMember):
            return (self.path, self.offset, self.size) == (other.path, other.offset, other.size) or \
                self.read_bytes() == other.read_bytes()
        if isinstance(other, (bytes, bytearray)):
            return self.size == len(other) and self.read_bytes() == bytes(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.path, self.offset, self.size))

    def __str__(self) -> str:
        return f"{self.path}@{self.offset}+{self.size}"


ImageRef = Union[str, Path, bytes, Image.Image, TarMember]
MAX_IMAGE_PIXELS = 25_000_000  # open_image refuses bigger files (5000 x 5000) before decoding


class BadImage(ValueError):
    """An image could not be decoded (corrupt, truncated, missing or not an image)."""


@dataclass
class ImageTextRecord:
    """One image and what is said about it."""

    id: str  # unique within its dataset
    image: ImageRef  # path, encoded bytes, or PIL image; open with open_image()
    captions: list[str] = field(default_factory=list)  # zero or more captions
    label: str | None = None  # class name, for classification datasets
    split: str | None = None  # "train" / "val" / "test" / ...
    domain: str | None = None  # NoCaps-style domain: "in" / "near" / "out"
    tags: list[str] = field(default_factory=list)  # classes of the objects shown (multi-label supervision)


@dataclass
class VQARecord:
    """One question about one image, with the human answers."""

    question_id: str  # unique within its dataset
    image_id: str  # id of the image the question is about
    image: ImageRef  # path, encoded bytes, or PIL image
    question: str  # e.g. "what colour is the circle?"
    answers: list[str]  # the 10 human answers (VQAv2 protocol)
    answer_type: str | None = None  # "yes/no" / "number" / "other" / shapes-world types
    split: str | None = None  # "train" / "val" / "test" / ...


def _check_regular_file(path: str | os.PathLike) -> None:
    """BadImage for a path that exists but is no regular file: reading a named pipe or a device would block forever."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return  # open() below reports the missing file
    except OSError as err:
        raise BadImage(f"cannot read image file {path}: {err}") from err
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):  # a folder fails in open() with its own message
        raise BadImage(f"cannot read image {path}: not a regular file (a named pipe, socket or device)")


def open_image(ref: ImageRef, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode `ref` into an RGB PIL image; transparent pixels are composited onto white.

    Raises BadImage with a one-line reason for anything that is not a readable image, and for
    files of more than `max_pixels` pixels (None: no limit), judged from the header alone.
    """
    if isinstance(ref, Image.Image):
        return to_rgb(ref)
    if isinstance(ref, TarMember):
        try:
            ref = ref.read_bytes()
        except OSError as err:
            raise BadImage(f"cannot read image {ref}: {err}") from err
    where = "<bytes>" if isinstance(ref, (bytes, bytearray)) else str(ref)
    if isinstance(ref, (str, os.PathLike)):
        _check_regular_file(ref)
    try:
        with warnings.catch_warnings():  # PIL's own "decompression bomb" warning: the limit below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(ref) if isinstance(ref, (bytes, bytearray)) else ref) as handle:
                _check_pixels(handle, max_pixels)
                handle.load()
                image = handle.copy()
    except FileNotFoundError as err:
        raise BadImage(f"missing image file {ref}") from err
    except Image.DecompressionBombError as err:
        raise BadImage(_too_large(max_pixels)) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, BadImage):
            raise
        raise BadImage(f"cannot decode image {where}: {err}") from err
    return to_rgb(image)


def _too_large(max_pixels: int | None) -> str:
    limit = f"{max_pixels / 1e6:g} megapixels" if max_pixels else "PIL's decompression-bomb limit"
    return f"image larger than {limit}, not decoded"


def _check_pixels(handle: Image.Image, max_pixels: int | None) -> None:
    if max_pixels is not None and handle.width * handle.height > max_pixels:
        raise BadImage(_too_large(max_pixels))


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of `image`; RGBA / LA / palette-with-transparency go onto a white background."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class SkipCounter:
    """Counts samples skipped for bad input, by reason, and logs the first few of each."""

    def __init__(self, name: str = "data", log_first: int = 3):
        self.name = name  # shown in the summary line
        self.log_first = log_first  # how many examples of each reason to log
        self.by_reason: Counter[str] = Counter()

    def skip(self, reason: str, where: str = "") -> None:
        self.by_reason[reason] += 1
        if self.by_reason[reason] <= self.log_first:
            log.warning("%s: skipped %s (%s)", self.name, where or "a sample", reason)

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def summary(self) -> str:
        if not self.total:
            return f"{self.name}: no samples skipped"
        parts = ", ".join(f"{n} {reason}" for reason, n in self.by_reason.most_common())
        return f"{self.name}: skipped {self.total} samples ({parts})"

    def as_dict(self) -> dict[str, int]:
        return dict(self.by_reason)
