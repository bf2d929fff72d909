"""Image-caption data for LiMBeR training: dataset names -> records -> per-step batches.

`load_caption_records(dataset, split, n, seed, image_size)` reads the training records of any
dataset spec (`shapes`, `twemoji`, `jsonl:FILE`, `wds:...`) through the one resolver,
`vlbridge.data.datasets.load_dataset`. `tokenize_captions` turns every
caption of every record into token ids once (packed: `CaptionTokens`). `CaptionBatcher` then decides, for every
global step, which records form the batch and which of their captions is the target:

- epoch e visits all records in the order `permutation(N)` of a numpy Generator seeded
  with (seed, e), and samples one caption per record from the same Generator, so the data
  of step s is a pure function of (seed, s): resuming at any step replays it exactly;
- the last incomplete global batch of an epoch is dropped (every step sees `batch_size`);
- under DDP, rank r of W takes slice r of each global batch (batch_size / W records), so a
  run with W processes sees exactly the samples of a 1-process run with the same global batch;
- features streamed from disk (`ChunkedFeatures`, a store too large to hold) use a seeded
  shard-and-buffer order instead of a full permutation: epoch e permutes the store's chunks,
  cuts that order into windows of `buffer_chunks` chunks and permutes the records inside each
  window, so a step only ever touches the chunks of one or two windows (a `ChunkCache` of
  2 x buffer_chunks chunks reads every chunk once per epoch). The order is still a pure function
  of (seed, step), so a resumed run reads exactly the samples an uninterrupted one reads.

Batches follow the project's batch format: `image_features` (B, D) or (B, N, D) from the
feature cache (an in-memory tensor or a `ChunkedFeatures` stream), or `pixel_values` (B, 3, H, W) when the encoder is tuned (run every step),
plus `input_ids` (list of caption token lists; `Limber.training_inputs` adds EOS and pads)
and `id`.
"""

from __future__ import annotations

import hashlib
import logging
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from vlbridge.data import datasets
from vlbridge.data.feature_chunks import ChunkCache
from vlbridge.data.records import BadImage, ImageTextRecord, SkipCounter, open_image
from vlbridge.data.specs import parse_spec
from vlbridge.errors import UserError

log = logging.getLogger(__name__)

GENERATED_WORLDS = ("shapes", "objects")  # datasets drawn on demand, sized by data.n
WORLD_DEFAULT_N = 2000  # images of a generated world when data.n is 0 (the default)


def load_caption_records(
    dataset: str, split: str = "train", n: int = 0, seed: int = 0, image_size: int = 64
) -> list[ImageTextRecord]:
    """Image-caption records of dataset spec `dataset` / `split`; records without captions dropped.

    Read by the one resolver, `vlbridge.data.datasets.load_dataset`: `n` > 0 is n= (shapes: images
    generated; others: a seeded subset), 0 the whole split (a generated world: WORLD_DEFAULT_N images);
    `seed` and `image_size` fill in what the spec leaves out.
    """
    if n < 0:
        raise UserError(f"data.n is a number of records (0: all) and must be >= 0, got {n}")
    if n == 0 and parse_spec(dataset).scheme in GENERATED_WORLDS:
        n = WORLD_DEFAULT_N  # a generated world has no "all"; user data is never capped unless data.n says so
    data = datasets.load_dataset(dataset, "image_text", split=split, n=n or None, seed=seed, image_size=image_size)
    return drop_captionless(data.record_list(), where=data.name)


def drop_captionless(records: Sequence[ImageTextRecord], where: str = "data") -> list[ImageTextRecord]:
    """Keep records with at least one non-empty caption; count the others as skipped."""
    skips = SkipCounter(where)
    kept = []
    for record in records:
        if any(caption.strip() for caption in record.captions):
            kept.append(record)
        else:
            skips.skip("no caption", record.id)
    if skips.total:
        log.warning(skips.summary())
    if not kept:
        raise UserError(f"{where}: no records with captions; LiMBeR training needs image-caption pairs")
    return kept


def dataset_cache_name(dataset: str, seed: int, image_size: int) -> str:
    """Name under which the feature cache stores this dataset (includes what changes the images)."""
    if dataset == "shapes":
        return f"shapes-seed{seed}-size{image_size}"
    return dataset


TOKENIZE_BATCH = 4096  # captions per tokenizer call: the tokenizer's per-caption objects never outnumber this


class CaptionTokens(Sequence):
    """Token ids of every caption of every record, packed into one int32 array (see tokenize_captions).

    `tokens[i]` is record i's captions as lists of ids, built on demand; held are only the ids
    (4 bytes each) and two offset arrays, not a Python list per caption (~36 bytes per id).
    """

    def __init__(self, ids: np.ndarray, caption_starts: np.ndarray, record_starts: np.ndarray):
        self.ids = ids  # (T,) int32: every caption's ids, back to back
        self.caption_starts = caption_starts  # (C + 1,) int64: caption c is ids[caption_starts[c]:caption_starts[c + 1]]
        self.record_starts = record_starts  # (R + 1,) int64: record r has captions record_starts[r] .. record_starts[r + 1] - 1

    def __len__(self) -> int:
        return len(self.record_starts) - 1

    def __getitem__(self, record: int) -> list[list[int]]:
        position = range(len(self))[record]  # negatives, slices and IndexError as a list has them
        if isinstance(position, range):
            return [self[i] for i in position]
        first, last = self.record_starts[position], self.record_starts[position + 1]
        return [self.ids[self.caption_starts[c] : self.caption_starts[c + 1]].tolist() for c in range(first, last)]

    def counts(self) -> np.ndarray:
        """(R,) number of captions of each record."""
        return np.diff(self.record_starts)

    @property
    def num_captions(self) -> int:
        return len(self.caption_starts) - 1


def tokenize_captions(tokenize: Callable[[list[str]], list[list[int]]], records, max_tokens: int) -> CaptionTokens:
    """Token ids of every non-empty caption of every record (no EOS), truncated to `max_tokens`.

    Tokenized TOKENIZE_BATCH captions at a time and packed as they come, so memory grows by the
    ids alone (a few hundred bytes per record), not by the tokenizer's objects for the whole set.
    """
    parts: list[np.ndarray] = []  # (t,) int32 packed ids of each tokenizer call
    lengths = array("q")  # ids kept of every caption, in order
    per_record = array("q")  # captions of every record
    pending: list[str] = []

    def flush() -> None:
        rows = [row[:max_tokens] for row in tokenize(pending)]
        lengths.extend(len(row) for row in rows)
        parts.append(np.fromiter((i for row in rows for i in row), dtype=np.int32))
        pending.clear()

    for record in records:
        captions = [caption.strip() for caption in record.captions if caption.strip()]
        per_record.append(len(captions))
        pending.extend(captions)
        if len(pending) >= TOKENIZE_BATCH:
            flush()
    if pending:
        flush()
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    return CaptionTokens(ids, _starts(lengths), _starts(per_record))


def _starts(counts: array) -> np.ndarray:
    """(n + 1,) int64 offsets of n consecutive runs of `counts` items: 0, c0, c0 + c1, ..."""
    return np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(np.frombuffer(counts, dtype=np.int64))])


def keep_readable_images(records: Sequence[ImageTextRecord]) -> list[ImageTextRecord]:
    """Records whose image opens (the tuned encoder reads pixels every step); others skipped and counted."""
    skips = SkipCounter("images")
    kept = []
    for record in records:
        try:
            open_image(record.image)
        except BadImage as err:
            skips.skip(str(err).split(":")[0], record.id)
            continue
        kept.append(record)
    if skips.total:
        log.warning(skips.summary())
    if not kept:
        raise UserError("no readable images in the training data")
    return kept


@dataclass
class StepSamples:
    """What one rank trains on at one step."""

    record_indices: list[int]  # indices into the record list
    caption_indices: list[int]  # which caption of each record is the target


class CaptionBatcher:
    """Deterministic (seed, step) -> this rank's records + caption choices (see module docstring)."""

    def __init__(self, caption_counts: Sequence[int], global_batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if global_batch_size % world_size:
            raise UserError(f"batch_size {global_batch_size} must be divisible by the number of processes {world_size}")
        if len(caption_counts) < global_batch_size:
            raise UserError(f"batch_size {global_batch_size} is larger than the dataset ({len(caption_counts)} records)")
        self.caption_counts = np.asarray(caption_counts, dtype=np.int64)  # captions per record
        self.global_batch_size = global_batch_size  # records per step, all ranks together
        self.local_batch_size = global_batch_size // world_size  # records per step on this rank
        self.seed = seed  # data-order seed
        self.rank = rank  # this process's slice of every global batch
        self.steps_per_epoch = len(caption_counts) // global_batch_size  # incomplete batch dropped
        self.groups: list[np.ndarray] | None = None  # record indices per store chunk (shard-and-buffer order)
        self.buffer_chunks = 0  # chunks whose records are shuffled together (shard-and-buffer order)
        self._cached_epoch: tuple[int, np.ndarray, np.ndarray] | None = None

    def use_chunk_order(self, groups: Sequence[np.ndarray], buffer_chunks: int) -> None:
        """Shuffle by shard-and-buffer over `groups` (the records of each store chunk; see module docstring)."""
        if buffer_chunks < 1:
            raise UserError(f"data.shuffle_buffer_chunks must be >= 1, got {buffer_chunks}")
        self.groups, self.buffer_chunks, self._cached_epoch = list(groups), buffer_chunks, None

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(record order (N,), caption choice per record (N,)) of `epoch`."""
        if self._cached_epoch is None or self._cached_epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = self._shard_buffer_order(rng) if self.groups is not None else rng.permutation(len(self.caption_counts))
            choice = np.floor(rng.random(len(self.caption_counts)) * self.caption_counts).astype(np.int64)
            self._cached_epoch = (epoch, order, choice)
        return self._cached_epoch[1], self._cached_epoch[2]

    def _shard_buffer_order(self, rng: np.random.Generator) -> np.ndarray:
        """Chunks permuted, then the records of each window of `buffer_chunks` chunks permuted: (N,)."""
        chunk_order = rng.permutation(len(self.groups))
        windows = []
        for start in range(0, len(chunk_order), self.buffer_chunks):
            members = np.concatenate([self.groups[c] for c in chunk_order[start : start + self.buffer_chunks]])
            windows.append(members[rng.permutation(len(members))])
        return np.concatenate(windows) if windows else np.zeros(0, dtype=np.int64)

    def position(self, step: int) -> dict:
        """Where the data stands before `step`: what a checkpoint records and a resume checks."""
        epoch, within = divmod(step, self.steps_per_epoch)
        order, _ = self.epoch_plan(epoch)
        digest = hashlib.sha256(np.ascontiguousarray(order, dtype=np.int64).tobytes()).hexdigest()[:16]
        return {"epoch": epoch, "batch_in_epoch": within, "records": len(self.caption_counts),
                "order": "shard-buffer" if self.groups is not None else "permutation", "order_check": digest}

    def samples(self, step: int) -> StepSamples:
        """This rank's samples at global step `step` (0-based)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        order, choice = self.epoch_plan(epoch)
        start = within * self.global_batch_size + self.rank * self.local_batch_size
        indices = order[start : start + self.local_batch_size]
        return StepSamples(record_indices=indices.tolist(), caption_indices=choice[indices].tolist())


def make_batch(
    samples: StepSamples,
    records: Sequence[ImageTextRecord],
    caption_ids: Sequence[Sequence[list[int]]],
    features: "torch.Tensor | ChunkedFeatures | None" = None,
    preprocess: Callable | None = None,
    device: torch.device | str = "cpu",
) -> dict:
    """Batch dict for `samples`: cached `image_features` rows, or `pixel_values` made with `preprocess`."""
    batch: dict = {
        "input_ids": [list(caption_ids[i][c]) for i, c in zip(samples.record_indices, samples.caption_indices)],
        "id": [records[i].id for i in samples.record_indices],
    }
    if isinstance(features, ChunkedFeatures):
        batch["image_features"] = features.rows(samples.record_indices).to(device)  # (B, D) or (B, N, D)
    elif features is not None:
        index = torch.tensor(samples.record_indices, device=features.device)
        batch["image_features"] = features.index_select(0, index).to(device)  # (B, D) or (B, N, D)
    elif preprocess is not None:
        pixels = [preprocess(open_image(records[i].image)) for i in samples.record_indices]
        batch["pixel_values"] = torch.stack(pixels).to(device)  # (B, 3, H, W)
    else:
        raise ValueError("make_batch needs cached features or a preprocess function")
    return batch


def stack_features(records: Sequence[ImageTextRecord], by_id: dict[str, torch.Tensor]) -> tuple[list[ImageTextRecord], torch.Tensor]:
    """Records that have cached features, and their features stacked in record order: (N, D) or (N, T, D)."""
    kept = records_with_features(records, by_id)
    return kept, torch.stack([by_id[record.id] for record in kept])


def records_with_features(records: Sequence[ImageTextRecord], feature_ids) -> list[ImageTextRecord]:
    """The records whose id is in `feature_ids` (the others are counted in the log); UserError if none is."""
    kept = [record for record in records if record.id in feature_ids]
    missing = len(records) - len(kept)
    if missing:
        log.warning("%d records have no features (unreadable images?) and are left out", missing)
    if not kept:
        raise UserError("no image features could be extracted for the training records")
    return kept


class ChunkedFeatures:
    """Features of record i streamed from store row `rows_of_records[i]` through a ChunkCache."""

    def __init__(self, stored, rows_of_records: np.ndarray, capacity: int):
        bounds = np.cumsum([0, *stored.chunk_rows])  # (C + 1,) first row of every chunk
        self.rows_of_records = np.asarray(rows_of_records, dtype=np.int64)  # (N,) store row of each record
        self.chunk_of_records = np.searchsorted(bounds, self.rows_of_records, side="right") - 1  # (N,)
        self.offset_in_chunk = self.rows_of_records - bounds[self.chunk_of_records]  # (N,)
        self.cache = ChunkCache(stored, capacity)  # the chunks in memory
        self.feature_shape = stored.feature_shape  # (D,) or (T, D)

    def __len__(self) -> int:
        return len(self.rows_of_records)

    def groups(self) -> list[np.ndarray]:
        """Record indices of every store chunk (in chunk order): the unit of the shard-and-buffer shuffle."""
        order = np.argsort(self.chunk_of_records, kind="stable")
        cuts = np.flatnonzero(np.diff(self.chunk_of_records[order])) + 1
        return np.split(order, cuts) if len(order) else []

    def rows(self, record_indices: Sequence[int]) -> torch.Tensor:
        """(B, D) / (B, T, D) float32 features of these records, in the order given."""
        out = []
        for record in record_indices:
            chunk = self.cache.get(int(self.chunk_of_records[record]))
            out.append(chunk[int(self.offset_in_chunk[record])])
        return torch.stack(out)  # stack copies: the batch never pins a cached chunk

    def iter_chunks(self):
        """(record indices, (n, ...) features) per store chunk, one chunk in memory at a time (not cached)."""
        for group in self.groups():
            chunk = int(self.chunk_of_records[group[0]])
            tensor = self.cache.stored.read_chunk(chunk)
            yield group, tensor[torch.from_numpy(self.offset_in_chunk[group])]


def rows_of_records(records: Sequence[ImageTextRecord], stored_ids: Sequence[str]) -> tuple[list[ImageTextRecord], np.ndarray]:
    """Records that have features in the store, and the store row of each: (kept records, (N,) rows)."""
    row_of_id = {record_id: row for row, record_id in enumerate(stored_ids)}
    kept = records_with_features(records, row_of_id)
    return kept, np.fromiter((row_of_id[record.id] for record in kept), dtype=np.int64, count=len(kept))
