"""Build a search index over any dataset spec, resumably, and add new images to it later.

    build_index(clip, "folder:photos", "runs/index")          # embed, write parts, choose the search kind
    add_to_index("runs/index", "folder:photos", clip)          # only images not in the index yet

Images go through the CLIP's image tower via the `FeatureStore` (cache folder `.features` inside
the index unless told otherwise), in parts of `part_size` records; every part is written
atomically and index.json is rewritten after each one, so a killed build loses at most the
part in progress, and rerunning the same command picks up where it stopped (the feature cache
keeps the finished chunks of that part too). Webdataset specs stream: parts are cut from the
stream, never the whole dataset in memory.

An image already indexed is skipped: its key is the resolved file path, or `spec#record-id`
for images without a file (those are copied into images/ so the server can show them).

Search kind (`kind="auto"`): exact matmul below `EXACT_MAX` rows, else faiss HNSW below
`HNSW_MAX`, else faiss IVF-Flat (inner product on unit vectors = cosine). Without faiss
installed every index is exact. Thresholds and recall figures: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from vlbridge.api.clip import ClipModel
from vlbridge.api.search_index import (
    FAISS_FILE, FORMAT_VERSION, INFO_FILE, KINDS, META_DIR, EMB_DIR, STORED_DIR,
    SearchIndex, apply_search_params, emb_path, meta_path, read_info, unit_rows,
)
from vlbridge.data.features import FeatureStore
from vlbridge.data.formats import load_image_text
from vlbridge.data.records import ImageTextRecord, SkipCounter, TarMember
from vlbridge.errors import UserError
from vlbridge.io import atomic_path, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

EXACT_MAX = 50_000  # auto: exact search below this many rows (a matmul over them takes milliseconds)
HNSW_MAX = 2_000_000  # auto: HNSW below this many rows, IVF-Flat from here on
HNSW_M = 32  # HNSW graph degree
HNSW_EF_CONSTRUCTION = 80  # HNSW build-time beam
HNSW_EF_SEARCH = 64  # HNSW query-time beam (recall@10 in docs/BENCHMARKS.md)
IVF_MIN_PER_LIST = 39  # faiss wants at least this many training points per IVF list
FEATURE_CACHE = ".features"  # feature cache folder inside the index unless one is given
OWN_NAMES = {INFO_FILE, EMB_DIR, META_DIR, STORED_DIR, FAISS_FILE, FEATURE_CACHE}  # what may sit in an index folder


@dataclass
class IndexReport:
    """What one build / add call did."""

    root: Path  # the index folder
    added: int = 0  # rows added by this call
    already: int = 0  # records skipped because the index held them
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count (undecodable images, ...)
    count: int = 0  # rows in the index afterwards
    kind: str = "exact"  # the search kind afterwards


def choose_kind(count: int, requested: str = "auto") -> str:
    """The search kind for `count` rows ("auto" picks by size; see the module docstring)."""
    if requested != "auto":
        if requested not in KINDS:
            raise UserError(f"index kind must be auto or one of {', '.join(KINDS)}, got {requested!r}")
        return requested
    if count < EXACT_MAX:
        return "exact"
    return "hnsw" if count < HNSW_MAX else "ivf"


def build_index(clip: ClipModel, source: str, out: str | Path, kind: str = "auto", part_size: int = 50_000,
                feature_cache: str | Path | None = None, batch_size: int = 64) -> IndexReport:
    """Create (or resume) the index `out` over the images of data spec `source`."""
    out = Path(out)
    if out.exists() and read_info(out) is None:
        strangers = sorted(p.name for p in out.iterdir() if p.name not in OWN_NAMES) if out.is_dir() else [out.name]
        if strangers:
            raise UserError(f"{out} exists and is not a search index (holds {strangers[0]!r}); choose a new or empty folder")
    return add_to_index(out, source, clip, kind, part_size, feature_cache, batch_size)


def add_to_index(root: str | Path, source: str, clip: ClipModel | None = None, kind: str | None = None,
                 part_size: int = 50_000, feature_cache: str | Path | None = None, batch_size: int = 64) -> IndexReport:
    """Embed the records of `source` the index does not hold yet and append them as new parts."""
    root = Path(root)
    if part_size < 1:
        raise UserError(f"part size must be at least 1 record, got {part_size}")
    info = read_info(root)
    if clip is None:
        if info is None:
            raise UserError(f"{root} is not a search index yet; build it first with --clip")
        clip = ClipModel.from_pretrained(info["clip"])
    encoder = clip.image_encoder
    info = info or _new_info(clip, encoder)
    if info["encoder_id"] != encoder.encoder_id:
        raise UserError(f"index {root} was built with CLIP {info['clip']} ({info['encoder_id']}); "
                        f"this CLIP is {encoder.encoder_id}; add with the same CLIP or build a new index")
    store = FeatureStore(Path(feature_cache) if feature_cache else root / FEATURE_CACHE)
    known = _known_keys(root, info)
    skips = SkipCounter(f"index {source}")
    report = IndexReport(root)
    for window in _windows(_new_records(load_image_text(source, skips), source, known, report), part_size):
        result = store.extract(encoder, source, "index", [record for record, _ in window], batch_size=batch_size)
        for reason_id in result.stats.skipped:
            skips.skip("undecodable image", reason_id)
        rows = [(record, key, result.features[str(record.id)]) for record, key in window if str(record.id) in result.features]
        if rows:
            _write_part(root, info, source, rows)
            known.update(key for _, key, _ in rows)
            report.added += len(rows)
    report.skipped = skips.as_dict()
    if info["count"] == 0:
        raise UserError(f"no image of {source} could be indexed ({skips.summary()})")
    _update_faiss(root, info, kind or info.get("requested_kind", "auto"), report.added)
    report.count, report.kind = info["count"], info["kind"]
    log.info("index %s: %d rows added, %d already there, %s", root, report.added, report.already, skips.summary())
    return report


def _new_info(clip: ClipModel, encoder) -> dict:
    return {"format": FORMAT_VERSION, "clip": clip.source, "clip_name": clip.name, "encoder_id": encoder.encoder_id,
            "dim": 0, "count": 0, "parts": [], "kind": "exact", "requested_kind": "auto", "faiss": {}, "roots": []}


def _known_keys(root: Path, info: dict) -> set[str]:
    keys: set[str] = set()
    for part in range(len(info["parts"])):
        for line in meta_path(root, part).read_text(encoding="utf-8").splitlines():
            if line:
                keys.add(json.loads(line)["key"])
    return keys


def record_key(record: ImageTextRecord, source: str) -> str:
    """The identity of an indexed image: its resolved file path, or `source#id` without a file."""
    if isinstance(record.image, (str, Path)):
        return str(Path(record.image).resolve())
    return f"{source}#{record.id}"


def _new_records(records: Iterable[ImageTextRecord], source: str, known: set[str], report: IndexReport) -> Iterator:
    """(record, key) for every record whose key is not in `known` (first of duplicate keys / ids only)."""
    seen: set[str] = set()
    seen_ids: set[str] = set()  # the feature cache keys records by id: a second record with an id is left out
    for record in records:
        key = record_key(record, source)
        if key in known or key in seen or str(record.id) in seen_ids:
            report.already += key in known
            continue
        seen.add(key)
        seen_ids.add(str(record.id))
        yield record, key


def _windows(items: Iterator, size: int) -> Iterator[list]:
    while window := list(itertools.islice(items, size)):
        yield window


def _write_part(root: Path, info: dict, source: str, rows: list) -> None:
    """Append one part (embeddings + metadata + stored images), then rewrite index.json."""
    part, first_row = len(info["parts"]), info["count"]
    embeddings = unit_rows(np.stack([features.numpy() for _, _, features in rows]))  # (n, E)
    lines, roots = [], set(info["roots"])
    for offset, (record, key, _) in enumerate(rows):
        row = first_row + offset
        if isinstance(record.image, (str, Path)):
            path = str(Path(record.image).resolve())
            roots.add(str(Path(path).parent))
        else:
            path = _store_image(root, row, record.image)
        caption = next((c.strip() for c in record.captions if c.strip()), "")
        lines.append(json.dumps({"id": row, "key": key, "path": path, "caption": caption, "source": source}))
    with atomic_path(emb_path(root, part)) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, embeddings)
    atomic_write_text(meta_path(root, part), "\n".join(lines) + "\n")
    info["dim"] = int(embeddings.shape[1])
    info["parts"].append({"n": len(rows), "source": source})
    info["count"] += len(rows)
    info["roots"] = sorted(roots)
    atomic_write_json(root / INFO_FILE, info)


def _store_image(root: Path, row: int, image) -> str:
    """Copy an image without a file into images/ (bytes as they are, PIL images as PNG); its relative path."""
    if isinstance(image, TarMember):
        image = image.read_bytes()  # a lazily read shard member
    if isinstance(image, (bytes, bytearray)):
        with Image.open(io.BytesIO(image)) as handle:
            extension = (handle.format or "png").lower().replace("jpeg", "jpg")
        data = bytes(image)
    else:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        extension, data = "png", buffer.getvalue()
    relative = Path(STORED_DIR) / f"{row:09d}.{extension}"
    from vlbridge.io import atomic_write_bytes

    atomic_write_bytes(root / relative, data)
    return str(relative)


def _update_faiss(root: Path, info: dict, requested: str, added: int) -> None:
    """Bring image.index in line with the rows: build it, extend it, or drop it for exact search."""
    kind = choose_kind(info["count"], requested)
    info["requested_kind"] = requested
    if kind != "exact":
        try:
            import faiss
        except ImportError:
            log.warning("faiss is not installed: index %s stays exact (pip install faiss-cpu for %s)", root, kind)
            kind = "exact"
    path = root / FAISS_FILE
    if kind == "exact":
        path.unlink(missing_ok=True)
        info.update(kind="exact", faiss={})
    elif kind == info["kind"] and path.is_file() and added:
        index = faiss.read_index(str(path))
        index.add(SearchIndex.open(root, use_faiss=False).embeddings[index.ntotal :])
        _write_faiss(path, index)
    elif kind != info["kind"] or not path.is_file():
        embeddings = SearchIndex.open(root, use_faiss=False).embeddings
        index, params = make_faiss_index(kind, embeddings)
        _write_faiss(path, index)
        info.update(kind=kind, faiss=params)
    atomic_write_json(root / INFO_FILE, info)


def make_faiss_index(kind: str, embeddings: np.ndarray, seed: int = 0):
    """(faiss index over `embeddings` (N, E) unit rows, its search params) for kind "hnsw" or "ivf"."""
    import faiss

    count, dim = embeddings.shape
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        params = {"m": HNSW_M, "ef_search": HNSW_EF_SEARCH}
    elif kind == "ivf":
        nlist = max(1, min(int(4 * math.sqrt(count)), count // IVF_MIN_PER_LIST))
        index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).permutation(count)[: nlist * 256]
        index.train(np.ascontiguousarray(embeddings[np.sort(sample)]))
        params = {"nlist": nlist, "nprobe": min(nlist, max(8, nlist // 16))}
    else:
        raise UserError(f"faiss index kind must be hnsw or ivf, got {kind!r}")
    index.add(np.ascontiguousarray(embeddings))
    apply_search_params(index, params)
    return index, params


def _write_faiss(path: Path, index) -> None:
    import faiss

    with atomic_path(path) as tmp:
        faiss.write_index(index, os.fspath(tmp))
