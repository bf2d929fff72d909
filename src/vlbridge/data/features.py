"""Pixels -> features: `extract_features`, the one path, and FeatureStore, its disk cache.

    out = extract_features(encoder, images, ids, batch_size=64)  # .features (K, ...), .kept, .ids, .skipped
    store = FeatureStore(Path(".cache/features"))
    features = store.get_or_extract(encoder, "shapes", "train", records)  # {id: (D,) or (N, D)}

`extract_features` opens the images (undecodable ones are skipped and counted), preprocesses
them with `encoder.preprocess`, runs the encoder on batches under autocast (bf16 on CUDA, fp32 on
CPU) and returns the features of the images that decoded with their positions and ids. Every
image feature in vlbridge comes from it: the FeatureStore (LiMBeR training, `vlbridge extract`,
the study, `vlbridge eval`), `ClipBundle.embed_images` and CLIP-S. It takes any object with
`.preprocess`, `.device` and a call (an `ImageEncoder`), or `forward=` for another entry point
(a CLIP's `encode_image`), so this layer never imports a model. With `workers` > 0 (the
FeatureStore's `workers`, `vlbridge extract --workers`) images are opened and preprocessed by
that many DataLoader worker processes, a few windows ahead, while this process encodes: same
features, order and skips as decoding in this process.

Cache key = (encoder.encoder_id - kind, architecture, mode and a hash of architecture +
weights -, encoder.preprocess_id, dataset name, split, the ordered record ids, storage dtype).
Any change of any part gives a different folder, so features are never served stale.

Layout, one folder per key under the root:
    <dataset>-<split>-<keyhash16>/key.json                the key fields (+ chunk size)
                                 /chunk-00000.safetensors  "features" (n_ok, ...) + metadata ids /
                                                           skipped / sha256 (data/feature_chunks.py)
                                 /index.json               written last: the extraction is complete
                                                           (+ every chunk's kept ids, skipped ids, shape)
Records are cut into fixed chunks of `chunk_size`; every chunk file is written atomically (temp
file + rename), so a killed extraction keeps its finished chunks and a rerun computes only the
missing ones. Before index.json is written, and whenever a complete store is opened, every
chunk is read back one at a time and its checksum and ids checked: a truncated or overwritten
chunk is recomputed with a warning, never reused. Under torchrun every rank encodes and checks
the chunks i with i % world_size == rank, rank 0 writes index.json after a barrier. With
`load=False` nothing is loaded (`result.stored` reads one chunk at a time: training at scale);
otherwise every rank reads all chunks back into `result.features`.

Records are anything with `.image` and an id: `.id` (ImageTextRecord) or `.image_id`
(VQARecord: several questions share one image, features are per image). Duplicate ids are
encoded once. Images that cannot be decoded are skipped, counted, and left out of the result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch
from tqdm import tqdm

from vlbridge.assets import cache_root
from vlbridge.data.records import BadImage, ImageRef, SkipCounter, open_image
from vlbridge.data.feature_chunks import DamagedChunk, StoredFeatures, chunk_path, load_chunk, save_chunk
from vlbridge.errors import UserError
from vlbridge.io import atomic_write_json
from vlbridge.runtime import DistEnv, autocast, barrier, gather_objects, ignore_stop_signals

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when the on-disk layout changes (part of every key); 2: checksummed chunks
KEY_FILE = "key.json"
INDEX_FILE = "index.json"
BAD_IMAGE_REASON = "bad image"  # SkipCounter reason of an image that does not decode


@dataclass
class ExtractionStats:
    """What one get_or_extract call did."""

    path: Path  # the key's folder
    total: int  # distinct records asked for
    computed: int  # records encoded by this call (all ranks together)
    reused: int  # records served from chunks already on disk
    skipped: dict[str, str] = field(default_factory=dict)  # id -> reason, for undecodable images


@dataclass
class ExtractionResult:
    """Features by id plus the stats of the call that produced them."""

    features: dict[str, torch.Tensor]  # id -> (D,) pooled or (N, D) grid; {} when extracted with load=False
    stats: ExtractionStats
    stored: StoredFeatures | None = None  # the complete store on disk, read one chunk at a time


def default_feature_root() -> Path:
    """The feature cache every command shares unless told otherwise: <VLBRIDGE_CACHE>/features."""
    return cache_root() / "features"


class FeatureStore:
    """Disk cache of encoder features, keyed by encoder / preprocessing / dataset / split / ids."""

    def __init__(self, root: str | Path, chunk_size: int = 1024, dtype: torch.dtype = torch.float32, workers: int = 0):
        if chunk_size < 1 or workers < 0:
            raise ValueError(f"chunk_size must be >= 1 and workers >= 0, got {chunk_size} and {workers}")
        self.root = Path(root)  # folder holding one sub-folder per key
        self.chunk_size = chunk_size  # records per chunk file (the resume granularity)
        self.dtype = dtype  # storage dtype of the features (float32; float16 halves disk use)
        self.workers = workers  # DataLoader processes decoding images for each chunk (0: in this process)
        self.last_stats: ExtractionStats | None = None  # stats of the latest get_or_extract call

    # ----------------------------------------------------------------------------------- keys
    def key(self, encoder, dataset_name: str, split: str, ids: Sequence[str]) -> dict:
        """The cache key fields for these (distinct, ordered) ids."""
        ids_hash = hashlib.sha256("\n".join(ids).encode()).hexdigest()
        return {
            "format": FORMAT_VERSION,
            "encoder_id": encoder.encoder_id,
            "preprocess_id": encoder.preprocess_id,
            "dataset": dataset_name,
            "split": split,
            "ids_sha256": ids_hash,
            "count": len(ids),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def folder(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.root / f"{_slug(key['dataset'])}-{_slug(key['split'])}-{digest}"

    # ------------------------------------------------------------------------------ main entry
    def get_or_extract(
        self,
        encoder,
        dataset_name: str,
        split: str,
        records: Sequence,
        batch_size: int = 64,
        env: DistEnv | None = None,
        on_chunk_done: Callable[[int], None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Features of every decodable record, {id: tensor}; encodes only what is not on disk."""
        result = self.extract(encoder, dataset_name, split, records, batch_size, env, on_chunk_done)
        return result.features

    def extract(
        self,
        encoder,
        dataset_name: str,
        split: str,
        records: Sequence,
        batch_size: int = 64,
        env: DistEnv | None = None,
        on_chunk_done: Callable[[int], None] | None = None,
        load: bool = True,
    ) -> ExtractionResult:
        """Like get_or_extract, also returning stats. `on_chunk_done(i)` runs after chunk i is saved.

        `load=False` leaves the features on disk (`result.features` is {}; read them with
        `result.stored`): memory stays one chunk, whatever the dataset's size.
        """
        env = env or DistEnv()
        unique = _unique_records(records)
        ids = [_record_id(r) for r in unique]
        key = self.key(encoder, dataset_name, split, ids)
        folder = self.folder(key)
        chunk_size = self._open_folder(folder, key)
        n_chunks = math.ceil(len(unique) / chunk_size)
        was_complete = (folder / INDEX_FILE).is_file()
        mine = [c for c in range(n_chunks) if c % env.world_size == env.rank]
        intact, todo = self._check_chunks(folder, mine, chunk_size, ids, warn_missing=was_complete)
        computed, written = self._encode_chunks(encoder, unique, todo, chunk_size, folder, batch_size, env, on_chunk_done)
        chunk_info = {c: info for part in gather_objects({**intact, **written}, env) for c, info in part.items()}
        computed = sum(gather_objects(computed, env))
        barrier(env)
        index = _index(key, n_chunks, chunk_info, _feature_shape(encoder, chunk_info))
        if env.is_main and (computed or not was_complete):
            atomic_write_json(folder / INDEX_FILE, index, indent=1)  # written last: the store is complete
        barrier(env)
        stored = StoredFeatures(folder, index)
        features = dict(zip(stored.ids, stored.read_all().unbind(0))) if load else {}
        reused = len(ids) - (computed if computed or not was_complete else len(stored.skipped))
        stats = ExtractionStats(folder, len(ids), computed, reused, dict(stored.skipped))
        return self._done(ExtractionResult(features, stats, stored))

    # ------------------------------------------------------------------------------- internals
    def _done(self, result: ExtractionResult) -> ExtractionResult:
        self.last_stats = result.stats
        stats = result.stats
        log.info(
            "features %s: %d computed, %d reused, %d skipped", stats.path, stats.computed, stats.reused, len(stats.skipped)
        )
        return result

    def _open_folder(self, folder: Path, key: dict) -> int:
        """Create the folder (or check the one there); return its chunk size."""
        key_file = folder / KEY_FILE
        if key_file.is_file():
            stored = json.loads(key_file.read_text())
            chunk_size = stored.pop("chunk_size")
            if stored != key:
                raise UserError(f"feature cache {folder} holds a different key (hash collision?); delete that folder")
            return int(chunk_size)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(key_file, {**key, "chunk_size": self.chunk_size}, indent=1)
        return self.chunk_size

    def _check_chunks(self, folder: Path, chunks: list[int], chunk_size: int, ids: list[str], warn_missing: bool):
        """({chunk: info} of the intact chunks, [chunks to (re)compute]); damaged ones warned about.

        Every chunk on disk is read and its checksum and ids checked (one chunk in memory at a time),
        so a truncated or overwritten chunk is recomputed, never reused.
        """
        intact: dict[int, dict] = {}
        todo: list[int] = []
        for chunk in chunks:
            path = _chunk_path(folder, chunk)
            try:
                chunk_ids, tensor, chunk_skipped = load_chunk(path)
                expected = ids[chunk * chunk_size : (chunk + 1) * chunk_size]
                if sorted(chunk_ids + list(chunk_skipped)) != sorted(expected):
                    raise DamagedChunk(f"{path.name} does not hold the ids its key says")
            except FileNotFoundError:
                if warn_missing:
                    log.warning("feature cache %s: %s is missing; recomputing it", folder, path.name)
                todo.append(chunk)
                continue
            except DamagedChunk as err:
                log.warning("feature cache %s: %s; recomputing that chunk", folder, err)
                todo.append(chunk)
                continue
            intact[chunk] = _chunk_info(chunk_ids, tensor, chunk_skipped)
        return intact, todo

    def _encode_chunks(self, encoder, records, todo, chunk_size, folder, batch_size, env, on_chunk_done):
        """Encode and save the chunks in `todo`; (records this rank encoded, {chunk: info})."""
        total = sum(len(records[c * chunk_size : (c + 1) * chunk_size]) for c in todo)
        skips = SkipCounter(f"features[{folder.name}]")
        computed, written = 0, {}
        with tqdm(total=total, desc="extract", unit="img", disable=None if env.is_main else True) as bar:
            for chunk in todo:
                part = records[chunk * chunk_size : (chunk + 1) * chunk_size]
                out = extract_features(encoder, [r.image for r in part], [_record_id(r) for r in part], batch_size,
                                       skips, bar=bar, workers=self.workers)
                features = out.features.to(self.dtype)
                save_chunk(_chunk_path(folder, chunk), out.ids, features, out.skipped)
                written[chunk] = _chunk_info(out.ids, features, out.skipped)
                computed += len(part)
                if on_chunk_done is not None:
                    on_chunk_done(chunk)
        if skips.total:
            log.warning(skips.summary())
        return computed, written


def _chunk_info(ids: list[str], features: torch.Tensor, skipped: dict[str, str]) -> dict:
    """What the index records of one chunk: its kept ids, skipped ids and per-image feature shape."""
    return {"ids": list(ids), "skipped": dict(skipped), "shape": list(features.shape[1:]) if len(ids) else None}


def _feature_shape(encoder, chunk_info: dict[int, dict]) -> list[int]:
    """Per-image feature shape: from any chunk with rows, else what the encoder says."""
    for info in chunk_info.values():
        if info["shape"] is not None:
            return info["shape"]
    return list(_empty_shape(encoder)[1:])


def _index(key: dict, n_chunks: int, chunk_info: dict[int, dict], feature_shape: list[int]) -> dict:
    """index.json: the key, the chunk count, every chunk's kept ids, the skipped ids, the feature shape."""
    skipped = {i: reason for c in range(n_chunks) for i, reason in chunk_info[c]["skipped"].items()}
    return {**key, "chunks": n_chunks, "feature_shape": feature_shape, "skipped": skipped,
            "chunk_ids": [chunk_info[c]["ids"] for c in range(n_chunks)]}


class PixelEncoder(Protocol):
    """What `extract_features` runs: anything with these (an ImageEncoder, a ClipBundle + forward=)."""

    preprocess: Callable  # PIL RGB image -> (3, H, W) tensor
    device: torch.device  # where the pixels go

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor: ...


@dataclass
class ExtractedFeatures:
    """What `extract_features` returns."""

    features: torch.Tensor  # (K, D) or (K, N, D) float32 on the CPU, one row per kept image
    kept: list[int]  # positions (in the images given) of the K images that decoded
    ids: list[str]  # ids of the K kept images
    skipped: dict[str, str] = field(default_factory=dict)  # id -> reason, for images that did not decode


@torch.no_grad()
def extract_features(
    encoder: PixelEncoder,
    images: Sequence[ImageRef],
    ids: Sequence[str] | None = None,
    batch_size: int = 64,
    skips: SkipCounter | None = None,
    mixed_precision: bool = True,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    bar=None,
    workers: int = 0,
) -> ExtractedFeatures:
    """The one pixel -> feature path: open each image (undecodable ones are skipped and counted),
    preprocess, run `forward` (default: the encoder itself) on batches under autocast, gather on CPU.

    Batches are windows of `batch_size` images given, less the skipped ones. `mixed_precision`:
    bf16 autocast on CUDA (a no-op on CPU). `ids` name the images in `skipped` and `ids`
    (default: their positions); `bar` (a tqdm) advances by the images of each window.
    `workers` > 0 opens and preprocesses the windows in that many DataLoader worker processes
    (`decoded_windows`); the features, their order and the skips are the same as with 0.
    """
    ids = [str(i) for i in range(len(images))] if ids is None else [str(i) for i in ids]
    forward = encoder if forward is None else forward
    device = torch.device(encoder.device)
    kept: list[int] = []
    skipped: dict[str, str] = {}
    with contextlib.closing(decoded_windows(encoder.preprocess, images, batch_size, workers)) as windows:
        outputs = _encode_windows(windows, forward, device, mixed_precision, ids, kept, skipped, skips, bar)
    features = torch.cat(outputs) if outputs else torch.zeros(_empty_shape(encoder))
    return ExtractedFeatures(features, kept, [ids[i] for i in kept], skipped)


def _encode_windows(windows, forward, device, mixed_precision, ids, kept, skipped, skips, bar) -> list[torch.Tensor]:
    """Run `forward` on each window's decoded pixels; fill kept / skipped; the outputs, (b, ...) each."""
    outputs: list[torch.Tensor] = []
    for window in windows:
        pixels = []
        for position, item in window:
            if isinstance(item, str):  # BadImage's reason
                skipped[ids[position]] = item
                if skips is not None:
                    skips.skip(BAD_IMAGE_REASON, ids[position])
                continue
            pixels.append(item)
            kept.append(position)
        if pixels:
            with autocast(device, enabled=mixed_precision):
                out = forward(torch.stack(pixels).to(device))  # (b, D) or (b, N, D)
            outputs.append(out.float().cpu())
        if bar is not None:
            bar.update(len(window))
    return outputs


PREFETCH_WINDOWS = 2  # windows each worker decodes ahead: at most workers x 2 windows of pixels in flight


class _DecodeImages(torch.utils.data.Dataset):
    """Position -> (position, preprocessed pixels) or (position, reason) when the image does not decode."""

    def __init__(self, preprocess: Callable, images: Sequence[ImageRef]):
        self.preprocess = preprocess  # PIL RGB image -> (3, H, W) tensor
        self.images = images  # the references, opened only here

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | str]:
        try:
            return position, self.preprocess(open_image(self.images[position]))
        except BadImage as err:
            return position, str(err)


def _keep_window(window: list) -> list:
    """Collate: a window stays a list of (position, pixels or reason); the caller stacks the kept pixels."""
    return window


def decoded_windows(preprocess: Callable, images: Sequence[ImageRef], batch_size: int, workers: int = 0):
    """Windows of `batch_size` decoded images in order; with `workers` > 0 decoded by DataLoader workers.

    Workers ignore Ctrl-C / SIGTERM (the main process decides when to stop) and each decodes at
    most PREFETCH_WINDOWS windows ahead, so memory stays a few windows of pixels. They are shut
    down when the windows run out or the generator is closed (`extract_features` closes it when
    the encoder fails half-way).
    """
    dataset = _DecodeImages(preprocess, images)
    if workers < 1 or not images:
        for start in range(0, len(images), batch_size):
            yield [dataset[p] for p in range(start, min(start + batch_size, len(images)))]
        return
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=min(workers, math.ceil(len(images) / batch_size)),
        collate_fn=_keep_window, prefetch_factor=PREFETCH_WINDOWS, worker_init_fn=ignore_stop_signals,
    )
    iterator = iter(loader)
    try:
        yield from iterator
    finally:
        iterator._shutdown_workers()  # now, not whenever the iterator is collected


def _empty_shape(encoder) -> tuple[int, ...]:
    """(0, D) / (0, N, D) for an ImageEncoder (it knows its feature shape), else (0, 0)."""
    if not hasattr(encoder, "feature_dim"):
        return (0, 0)
    return (0, encoder.feature_dim) if encoder.pooled else (0, encoder.num_tokens, encoder.feature_dim)


def _record_id(record) -> str:
    record_id = getattr(record, "id", None)
    if record_id is None:
        record_id = getattr(record, "image_id", None)
    if record_id is None:
        raise TypeError(f"records need an .id or .image_id, got {type(record).__name__}")
    return str(record_id)


def _unique_records(records: Sequence) -> list:
    """First record of each id, in order (VQA records share images)."""
    seen: set[str] = set()
    unique = []
    for record in records:
        record_id = _record_id(record)
        if record_id not in seen:
            seen.add(record_id)
            unique.append(record)
    return unique


def _chunk_path(folder: Path, chunk: int) -> Path:
    return chunk_path(folder, chunk)


def _slug(text: str) -> str:
    """File-name-safe short form of a dataset / split name (the hash keeps keys distinct)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[-40:] or "data"
