"""Dataset specs -> records: one entry point for every on-disk format and embedded dataset.

Other modules and the CLI name data with a spec string:

    folder:DIR                      image + same-stem .txt (one caption a line)
    csv:FILE[?image=col&caption=col&sep=\\t]   one (image path, caption) per row; .tsv means tabs
    jsonl:FILE                      {"id", "image", "captions" | "caption", label?, split?, domain?}
    wds:PATTERN[?by_rank=1]         webdataset shards, e.g. wds:shards/{000000..000009}.tar (streamed)
    coco:JSON[?images=DIR&karpathy=FILE&split=test]   COCO captions / Karpathy's dataset_coco.json
    nocaps:JSON?images=DIR          NoCaps val (domains in / near / out)
    vqav2:QUESTIONS?annotations=A&images=DIR        VQAv2 (load_vqa only)
    imagefolder:DIR[?split=S]       DIR/<class>/<image>: classification
    shapes[?n=..&split=..&seed=..&domain=..&image_size=..]   the procedural shapes world
    twemoji | openclipart | animal-silhouettes [?split=..&seed=..&n=..],  fashion-mnist[?split=..&n=..]

    load_image_text(spec, skips)     -> list[ImageTextRecord] (wds: a re-iterable stream)
    load_vqa(spec, skips)            -> list[VQARecord]        (vqav2:, jsonl: of VQA lines, shapes)
    load_classification(spec, skips) -> list[ImageTextRecord] with .label set
    export_records(records, out, format) writes wds / jsonl / folder / csv that read back equal.

Bad samples are skipped and counted in `skips` (a `SkipCounter`; one is made and its summary
logged when none is given); a bad file or spec raises one `UserError`. Images stay lazy: use
`iter_decoded(records, skips)` to decode them with undecodable ones skipped and counted.
Readers live in formats_simple (folder, CSV, JSONL, ImageFolder), formats_coco (COCO,
NoCaps, VQAv2) and formats_wds (webdataset).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from tqdm import tqdm

from vlbridge.data import formats_coco, formats_simple, formats_wds
from vlbridge.data.formats_common import (
    BAD_IMAGE,
    EMPTY_CAPTION,
    MISSING_IMAGE,
    NO_LABEL,
    encoded_image,
    iter_decoded,
)
from vlbridge.data.query_filter import FilterReport, filter_by_query_words
from vlbridge.data.records import BadImage, ImageTextRecord, SkipCounter, VQARecord
from vlbridge.errors import UserError

__all__ = [
    "EXPORT_FORMATS", "SCHEMES", "DataSpec", "ExportSummary", "FilterReport", "export_records",
    "filter_by_query_words", "iter_decoded", "load_classification", "load_image_text", "load_vqa", "parse_spec",
]

log = logging.getLogger(__name__)

SCHEMES = {  # scheme -> the ?options it accepts ("" target: a named dataset without ':')
    "folder": (), "csv": ("image", "caption", "sep"), "jsonl": (), "wds": ("by_rank",),
    "coco": ("images", "karpathy", "split"), "nocaps": ("images",), "vqav2": ("annotations", "images", "subtype"),
    "imagefolder": ("split",),
}
NAMED = {  # dataset names without a path -> the ?options they accept
    "shapes": ("n", "split", "seed", "domain", "image_size"),
    "twemoji": ("split", "seed", "n"), "openclipart": ("split", "seed", "n"),
    "animal-silhouettes": ("split", "seed", "n"), "fashion-mnist": ("split", "n"),
}
SHAPES_DEFAULT_N = 1000  # images of a bare "shapes" spec
EXPORT_FORMATS = ("wds", "jsonl", "folder", "csv")  # what export_records writes
SEPARATORS = {"\\t": "\t", "tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}  # sep= spellings


@dataclass
class DataSpec:
    """A parsed spec string: scheme (or dataset name), path / pattern, ?options."""

    scheme: str  # "csv", "wds", ... or a NAMED dataset
    target: str  # the path, file or shard pattern ("" for named datasets)
    options: dict[str, str]  # the ?key=value pairs


def known_specs() -> str:
    return ", ".join([f"{scheme}:..." for scheme in SCHEMES] + list(NAMED))


def parse_spec(spec: str) -> DataSpec:
    """Split "scheme:target?k=v&..." (or "name?k=v") and check scheme and option names."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"expected a dataset spec like jsonl:FILE or shapes, got {spec!r}; known: {known_specs()}")
    body, _, query = spec.strip().partition("?")
    if body in NAMED:
        scheme, target, allowed = body, "", NAMED[body]
    else:
        scheme, colon, target = body.partition(":")
        if not colon or scheme not in SCHEMES:
            raise UserError(f"unknown dataset spec {spec!r}: expected one of {known_specs()}")
        if not target:
            raise UserError(f"dataset spec {spec!r}: expected a path after '{scheme}:'")
        allowed = SCHEMES[scheme]
    pairs = (part.partition("=") for part in query.split("&") if part)
    options = {unquote(key): unquote(value) for key, _, value in pairs}  # '+' stays '+' (paths may hold it)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = list(allowed) or "no options"
        raise UserError(f"dataset spec {spec!r}: unknown option {unknown[0]!r}; {scheme} takes {takes}")
    return DataSpec(scheme, target, options)


def _int_option(spec: DataSpec, name: str, default: int | None) -> int | None:
    value = spec.options.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as err:
        raise UserError(f"dataset option {name}= expects a whole number, got {value!r}") from err


def _finish(records, skips: SkipCounter, own_counter: bool):
    if own_counter and skips.total:
        log.warning("%s", skips.summary())
    return records


# ------------------------------------------------------------------------------------ loaders
def load_image_text(spec: str, skips: SkipCounter | None = None) -> list[ImageTextRecord] | Iterable[ImageTextRecord]:
    """Image-caption records of `spec` (a list; for wds: a re-iterable stream)."""
    parsed = parse_spec(spec)
    own_counter = skips is None
    skips = SkipCounter(spec) if skips is None else skips
    options = parsed.options
    if parsed.scheme == "wds":
        by_rank = options.get("by_rank", "0").lower() not in ("", "0", "false", "no")
        return formats_wds.wds_records(parsed.target, skips, by_rank=by_rank)
    readers: dict[str, Callable[[], list]] = {
        "folder": lambda: formats_simple.read_folder(parsed.target, skips),
        "csv": lambda: formats_simple.read_csv(
            parsed.target, skips, options.get("image"), options.get("caption"), _separator(options.get("sep"))
        ),
        "jsonl": lambda: formats_simple.read_jsonl(parsed.target, skips),
        "coco": lambda: formats_coco.read_coco(
            parsed.target, skips, options.get("images"), options.get("karpathy"), options.get("split")
        ),
        "nocaps": lambda: formats_coco.read_nocaps(parsed.target, skips, options.get("images")),
        "imagefolder": lambda: formats_simple.read_imagefolder(parsed.target, skips, options.get("split")),
        "shapes": lambda: _shapes(parsed, "image_text"),
    }
    if parsed.scheme in readers:
        return _finish(readers[parsed.scheme](), skips, own_counter)
    if parsed.scheme in NAMED:
        return _embedded(parsed)
    raise UserError(f"dataset spec {spec!r} holds VQA questions, not captions; use it where VQA data is expected")


def load_vqa(spec: str, skips: SkipCounter | None = None) -> list[VQARecord]:
    """VQA records of `spec`: vqav2:QUESTIONS?annotations=..., jsonl:FILE of VQA lines, or shapes."""
    parsed = parse_spec(spec)
    own_counter = skips is None
    skips = SkipCounter(spec) if skips is None else skips
    if parsed.scheme == "vqav2":
        options = parsed.options
        records = formats_coco.read_vqav2(
            parsed.target, skips, options.get("annotations"), options.get("images"), options.get("subtype")
        )
    elif parsed.scheme == "jsonl":
        records = formats_simple.read_vqa_jsonl(parsed.target, skips)
    elif parsed.scheme == "shapes":
        records = _shapes(parsed, "vqa")
    else:
        raise UserError(
            f"dataset spec {spec!r} has no VQA questions; VQA specs are vqav2:QUESTIONS?..., jsonl:FILE or shapes"
        )
    return _finish(records, skips, own_counter)


def load_classification(spec: str, skips: SkipCounter | None = None) -> list[ImageTextRecord]:
    """Records of `spec` that carry a class label (records without one are skipped and counted)."""
    parsed = parse_spec(spec)
    own_counter = skips is None
    skips = SkipCounter(spec) if skips is None else skips
    if parsed.scheme == "shapes":
        return _shapes(parsed, "classification")
    labelled = []
    for record in load_image_text(spec, skips):
        if record.label:
            labelled.append(record)
        else:
            skips.skip(NO_LABEL, record.id)
    if not labelled:
        raise UserError(f"dataset spec {spec!r} holds no labelled images; classification needs a label per image")
    return _finish(labelled, skips, own_counter)


def _separator(value: str | None) -> str | None:
    if value is None:
        return None
    value = SEPARATORS.get(value, value)
    if len(value) != 1:
        raise UserError(f"csv option sep= expects one character (or \\t, tab, comma, semicolon, pipe), got {value!r}")
    return value


def _shapes(spec: DataSpec, kind: str) -> list:
    from vlbridge.data import shapes

    n = _int_option(spec, "n", SHAPES_DEFAULT_N)
    seed = _int_option(spec, "seed", 0)
    image_size = _int_option(spec, "image_size", 64)
    domain = spec.options.get("domain") or None
    if kind == "classification":
        return shapes.classification_records(n, spec.options.get("split", "test"), seed, image_size=image_size)
    split = spec.options.get("split", "train")
    if kind == "vqa":
        return shapes.vqa_records(n, split, seed, domain, image_size)
    return shapes.image_text_records(n, split, seed, domain, image_size)


def _embedded(spec: DataSpec) -> list[ImageTextRecord]:
    from vlbridge.data import embedded

    split = spec.options.get("split") or None
    n = _int_option(spec, "n", None)
    if spec.scheme == "fashion-mnist":
        return embedded.fashion_mnist_records(split or "test", n=n)
    readers = {
        "twemoji": embedded.twemoji_records,
        "openclipart": embedded.openclipart_records,
        "animal-silhouettes": embedded.animal_silhouette_records,
    }
    return readers[spec.scheme](split=split, seed=_int_option(spec, "seed", 0), n=n)


# ------------------------------------------------------------------------------------ export
@dataclass
class ExportSummary:
    """What export_records wrote."""

    out: Path  # the output directory
    format: str  # one of EXPORT_FORMATS
    written: int  # records written
    read_back: str  # the spec that reads the export back
    skips: SkipCounter  # records left out (undecodable image, empty caption, ...)


def export_records(
    records: Iterable[ImageTextRecord],
    out: str | Path,
    format: str,
    shard_size: int = 1000,
    skips: SkipCounter | None = None,
    progress: bool = True,
) -> ExportSummary:
    """Write `records` as `format` under the new or empty directory `out`; images are validated.

    wds: OUT/000000.tar... (`shard_size` samples each); jsonl: OUT/captions.jsonl + OUT/images/;
    folder: OUT/<id>.<ext> + OUT/<id>.txt; csv: OUT/data.csv + OUT/images/.
    """
    if format not in EXPORT_FORMATS:
        raise UserError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    if format == "wds" and (not isinstance(shard_size, int) or shard_size < 1):
        raise UserError(f"shard size must be at least 1 sample per shard, got {shard_size!r}")
    out = _empty_out_dir(Path(out))
    skips = skips if skips is not None else SkipCounter("export")
    encode = _encoder(skips)
    if format == "wds":
        written_records = formats_wds.write_wds(records, out, encode, shard_size)
    else:
        simple_writers = {"jsonl": formats_simple.write_jsonl, "folder": formats_simple.write_folder,
                          "csv": formats_simple.write_csv}
        written_records = simple_writers[format](records, out, encode)
    written = sum(1 for _ in tqdm(written_records, desc=f"export {format}", unit="rec", disable=None if progress else True))
    return ExportSummary(out, format, written, read_back_spec(out, format), skips)


def read_back_spec(out: Path, format: str) -> str:
    """The spec that reads what export_records wrote to `out` as `format`."""
    if format == "wds":
        return f"wds:{formats_wds.written_pattern(out)}"
    specs = {"jsonl": f"jsonl:{out / 'captions.jsonl'}", "folder": f"folder:{out}", "csv": f"csv:{out / 'data.csv'}"}
    return specs[format]


def _empty_out_dir(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "is not a directory" if not out.is_dir() else "is not empty"
        raise UserError(f"output {out} {what}; expected a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


Encoded = Iterator[tuple[ImageTextRecord, bytes, str]]  # (record, image bytes, file extension)


def _encoder(skips: SkipCounter) -> Callable[[Iterable[ImageTextRecord]], Encoded]:
    """records -> (record, image bytes, extension); captionless or undecodable records are counted."""

    def encode(records: Iterable[ImageTextRecord]) -> Encoded:
        for record in records:
            captions = [caption.strip() for caption in record.captions if caption.strip()]
            if not captions:
                skips.skip(EMPTY_CAPTION, record.id)
                continue
            try:
                data, ext = encoded_image(record.image)
            except BadImage as err:
                missing = isinstance(err.__cause__, FileNotFoundError)
                skips.skip(MISSING_IMAGE if missing else BAD_IMAGE, f"{record.id}: {err}")
                continue
            yield (record if captions == record.captions else _with_captions(record, captions)), data, ext

    return encode


def _with_captions(record: ImageTextRecord, captions: list[str]) -> ImageTextRecord:
    return ImageTextRecord(record.id, record.image, captions, record.label, record.split, record.domain)
