"""Records -> (pixel_values, input_ids) batches for CLIP training, deterministic and resumable.

Sources (`ClipDataConfig.source`):
- "embedded": the shapes world's train split + Twemoji + openclipart train splits (the two
  embedded assets are skipped with a warning when missing; openclipart optionally reduced to
  captions holding one of the top-m query words, CLIP's dataset recipe);
- any dataset spec (webdataset shards included), read by `vlbridge.data.datasets.load_dataset`.
A source that is a list is read map-style; any other iterable is streamed.

Map-style order is a pure function of (seed, global sample position): position p belongs to
epoch p // N and is record `perm_epoch[p % N]`; its caption (one of the record's captions) and
its augmentation are seeded by (seed, p). Step s reads positions [s*B, (s+1)*B) of the global
batch B, and rank r takes the r-th 1/W slice. So one process and W processes see the same global
batch, and resuming at step s replays exactly the batches an uninterrupted run would have read.
A bad image is skipped and counted (SkipCounter) and replaced by a deterministic substitute so
every rank's batch keeps its size (all_gather needs equal shapes).

Streams are shuffled through a seeded buffer; record i of the shuffled stream goes to rank
i % W, and the data state saved in checkpoints is each rank's position in that stream.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlbridge.data import datasets
from vlbridge.data.query_filter import filter_by_query_words
from vlbridge.data.records import MAX_IMAGE_PIXELS, BadImage, ImageTextRecord, SkipCounter, open_image
from vlbridge.errors import AssetMissingError, UserError
from vlbridge.runtime import ignore_stop_signals
from vlbridge.training.clip_augment import FastCropNormalize

log = logging.getLogger(__name__)

MAX_SUBSTITUTES = 16  # bad samples in a row before a batch gives up
MAX_CACHED_CAPTIONS = 200_000  # token-id cache size (BPE tokenizing costs ~0.3 ms a caption)


@dataclass
class ClipDataConfig:
    """Where CLIP training pairs come from and how images are augmented."""

    source: str = "embedded"  # "embedded" (shapes + Twemoji + openclipart), a data spec, or specs joined by " + "
    shapes_n: int = 20000  # shapes-world train images in the embedded default
    shapes_seed: int = 0  # seed of the shapes world (train split)
    shapes_image_size: int = 64  # side of the rendered shapes images, pixels
    shapes_max_objects: int = 2  # most shapes per image (1..max uniformly; 2: half single-object, zero-shot learns faster than with 3)
    twemoji: bool = True  # add the Twemoji train split (skipped with a warning if not installed)
    openclipart: bool = True  # add the openclipart train split (skipped with a warning if not installed)
    openclipart_n: int | None = 1000  # openclipart images used (seeded subset; None: all ~6.5k; large PNGs decode slowly)
    query_top_m: int | None = None  # keep only web-like records whose text holds a top-m query word (None: all)
    aug_scale_min: float = 0.9  # RandomResizedCrop keeps at least this fraction of the area (1.0: no crop)
    workers: int = 1  # DataLoader worker processes (0: load in the training process; 1 overlaps loading with the step: ~1.12x on 2 cores)
    cache_side: int = 128  # decoded file images are kept in memory, shortest side shrunk to this
    max_image_pixels: int = MAX_IMAGE_PIXELS  # larger images are skipped (openclipart has 168-megapixel PNGs: seconds each)
    shuffle_buffer: int = 2000  # shuffle buffer of streamed sources


# ------------------------------------------------------------------------------------ sources


def embedded_records(cfg: ClipDataConfig) -> list[ImageTextRecord]:
    """The embedded default, a composite of resolved specs: the shapes world's train split (always)
    + the Twemoji and openclipart train splits when installed."""
    records = list(_records(f"shapes?max_objects={cfg.shapes_max_objects}", split="train", n=cfg.shapes_n,
                            seed=cfg.shapes_seed, image_size=cfg.shapes_image_size))
    web: list[ImageTextRecord] = []
    if cfg.twemoji:
        web += _optional_asset("Twemoji", lambda: _records("twemoji", split="train"))
    if cfg.openclipart:
        clipart = _optional_asset("openclipart", lambda: _records("openclipart", split="train"))
        if cfg.openclipart_n is not None and cfg.openclipart_n < len(clipart):
            keep = np.random.default_rng([cfg.shapes_seed, 7]).choice(len(clipart), cfg.openclipart_n, replace=False)
            clipart = [clipart[i] for i in sorted(keep)]
        web += clipart
    if cfg.query_top_m is not None and web:
        web = list(filter_by_query_words(web, cfg.query_top_m))
    log.info("embedded CLIP data: %d shapes-world + %d Twemoji/openclipart records", len(records), len(web))
    return records + web


SOURCE_JOIN = " + "  # joins the specs of a composite source


def composite_records(cfg: ClipDataConfig) -> list[ImageTextRecord]:
    """Records of every spec in `source` ("a + b + ..."), in that order (each spec must be finite)."""
    records: list[ImageTextRecord] = []
    for part in cfg.source.split(SOURCE_JOIN):
        records += _finite_records(part.strip())
    if cfg.query_top_m is not None:
        records = list(filter_by_query_words(records, cfg.query_top_m))
    return records


@functools.lru_cache(maxsize=4)
def _finite_records(spec: str) -> tuple[ImageTextRecord, ...]:
    """The records of one finite spec, kept for the process: the study's ladder trains several
    towers on the same rendered images, and rendering 20k scenes costs more than a few steps."""
    records = _records(spec)
    if not isinstance(records, list):
        raise UserError(f"data.source: {spec!r} is a stream; a composite source joins finite specs only")
    return tuple(records)


def _records(spec: str, **request) -> list[ImageTextRecord] | Iterable[ImageTextRecord]:
    """Image-caption records of a dataset spec, through the one resolver (vlbridge.data.datasets)."""
    return datasets.load_dataset(spec, "image_text", **request).records


def _optional_asset(name: str, read: Callable[[], list[ImageTextRecord]]) -> list[ImageTextRecord]:
    try:
        return list(read())
    except AssetMissingError as err:
        log.warning("%s skipped: %s", name, err)
        return []


def load_source(cfg: ClipDataConfig) -> list[ImageTextRecord] | Callable[[], Iterable[ImageTextRecord]]:
    """A list of records (map-style) or a factory that opens a fresh stream each epoch."""
    if cfg.source == "embedded":
        return embedded_records(cfg)
    if SOURCE_JOIN in cfg.source:
        return composite_records(cfg)
    if cfg.query_top_m is not None:
        return list(filter_by_query_words(list(_records(cfg.source)), cfg.query_top_m))
    first = _records(cfg.source)
    if isinstance(first, list):
        return first
    return lambda: _records(cfg.source)


# ------------------------------------------------------------------------------------ samples


def seeded_transform(transform: Callable, image: Image.Image, seed: int) -> torch.Tensor:
    """Apply a random torchvision transform with its own RNG, leaving the global RNGs untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU generator only (torch.manual_seed also seeds devices: slow)
        state = random.getstate()
        random.seed(seed)
        try:
            return transform(image)
        finally:
            random.setstate(state)


class PairMaker:
    """Turns one record into (pixels (3, H, W), token ids (L,)), seeded by a sample key.

    Pixels are uint8 crops on the fast path (`clip_augment`), normalised per batch by
    `PairMaker.collate`; other transforms give normalised float pixels directly.
    """

    def __init__(self, transform: Callable, tokenizer: Callable, seed: int, cache_side: int, max_pixels: int = MAX_IMAGE_PIXELS):
        self.transform = transform  # open_clip training transform
        self.fast_transform = FastCropNormalize.from_transform(transform)  # the same ops, ~8x cheaper (None: not that shape)
        self.tokenizer = tokenizer  # texts -> (B, L) ids
        self.seed = seed  # run seed; mixed into every sample key
        self.cache_side = cache_side  # shortest side of cached decoded images
        self.max_pixels = max_pixels  # bigger files are refused before decoding
        self.image_cache: dict[str, Image.Image] = {}  # record id -> decoded, shrunk image
        self.token_cache: dict[str, torch.Tensor] = {}  # caption -> (L,) ids

    def image(self, record: ImageTextRecord) -> Image.Image:
        if isinstance(record.image, Image.Image):
            return open_image(record.image)
        cached = self.image_cache.get(record.id)
        if cached is None:
            cached = open_image(record.image, max_pixels=self.max_pixels)
            if min(cached.size) > self.cache_side:
                scale = self.cache_side / min(cached.size)
                cached = cached.resize((max(1, round(cached.width * scale)), max(1, round(cached.height * scale))), Image.BICUBIC)
            self.image_cache[record.id] = cached
        return cached

    def __call__(self, record: ImageTextRecord, key: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raises BadImage / ValueError for an unusable record."""
        if not record.captions:
            raise ValueError("record has no caption")
        rng = np.random.default_rng([self.seed, *key])
        caption = record.captions[int(rng.integers(len(record.captions)))]
        if self.fast_transform is not None:
            pixels = self.fast_transform.crop(self.image(record), rng)  # (3, H, W) uint8: `collate` normalises
        else:
            pixels = seeded_transform(self.transform, self.image(record), int(rng.integers(2**62)))  # (3, H, W)
        return pixels, self.tokens(caption)  # (L,)

    def collate(self, samples: list[tuple[torch.Tensor, torch.Tensor, str]], skipped: list[tuple[str, str]]) -> dict[str, Any]:
        """`collate`, normalising uint8 crops of the fast path as one batch."""
        batch = collate(samples, skipped)
        if batch["pixel_values"].dtype == torch.uint8:
            batch["pixel_values"] = self.fast_transform.normalize(batch["pixel_values"])  # (n, 3, H, W)
        return batch

    def tokens(self, caption: str) -> torch.Tensor:
        ids = self.token_cache.get(caption)
        if ids is None:
            if len(self.token_cache) >= MAX_CACHED_CAPTIONS:
                self.token_cache.clear()
            ids = self.token_cache[caption] = self.tokenizer([caption])[0].long()  # (L,)
        return ids


def collate(samples: list[tuple[torch.Tensor, torch.Tensor, str]], skipped: list[tuple[str, str]]) -> dict[str, Any]:
    """The shared batch format (+ "skipped": (reason, record id) of replaced bad samples)."""
    return {
        "pixel_values": torch.stack([s[0] for s in samples]),  # (n, 3, H, W)
        "input_ids": torch.stack([s[1] for s in samples]),  # (n, L)
        "id": [s[2] for s in samples],
        "skipped": skipped,
    }


# ------------------------------------------------------------------------------------ map-style


class EpochOrder:
    """Global sample position -> record index, through one seeded permutation per epoch."""

    def __init__(self, num_records: int, seed: int):
        if num_records == 0:
            raise UserError("the CLIP training source holds no records")
        self.num_records = num_records  # N
        self.seed = seed  # permutation seed
        self.permutations: dict[int, torch.Tensor] = {}  # epoch -> permutation (last two kept)

    def __call__(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_records)
        if epoch not in self.permutations:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self.permutations = {e: p for e, p in self.permutations.items() if e == epoch - 1}
            self.permutations[epoch] = torch.randperm(self.num_records, generator=generator)
        return int(self.permutations[epoch][offset])


class PairDataset(torch.utils.data.Dataset):
    """Map-style: item = one rank's batch of global positions -> collated batch."""

    def __init__(self, records: Sequence[ImageTextRecord], make_pair: PairMaker, seed: int):
        self.records = records  # the whole source
        self.make_pair = make_pair  # record -> tensors
        self.order = EpochOrder(len(records), seed)  # position -> record index

    def __len__(self) -> int:
        return 2**62  # positions are unbounded; the sampler decides which are read

    def sample(self, position: int, skipped: list) -> tuple[torch.Tensor, torch.Tensor, str]:
        index = self.order(position)
        for attempt in range(MAX_SUBSTITUTES):
            record = self.records[(index + attempt) % len(self.records)]
            try:
                return (*self.make_pair(record, (position, attempt)), record.id)
            except (BadImage, ValueError, OSError) as err:
                skipped.append((str(err).splitlines()[0][:120], record.id))
        raise UserError(f"{MAX_SUBSTITUTES} unusable records in a row near position {position}; check the dataset")

    def __getitem__(self, positions: list[int]) -> dict[str, Any]:
        skipped: list[tuple[str, str]] = []
        return self.make_pair.collate([self.sample(p, skipped) for p in positions], skipped)


class StepSampler(torch.utils.data.Sampler):
    """Yields, for steps start..end-1, this rank's slice of the step's global positions."""

    def __init__(self, start_step: int, end_step: int, global_batch: int, rank: int, world_size: int):
        self.start_step, self.end_step = start_step, end_step  # steps to read
        self.local_batch = global_batch // world_size  # samples per rank and step
        self.global_batch = global_batch  # samples per step, all ranks
        self.rank = rank  # which slice

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.end_step):
            first = step * self.global_batch + self.rank * self.local_batch
            yield list(range(first, first + self.local_batch))


def map_style_batches(dataset: PairDataset, sampler: StepSampler, workers: int) -> Iterator[dict[str, Any]]:
    loader = torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=None, num_workers=workers, persistent_workers=workers > 0,
        worker_init_fn=ignore_stop_signals if workers > 0 else None,
    )
    yield from loader


# ------------------------------------------------------------------------------------ streams


class StreamBatches:
    """Batches from a streamed source: seeded shuffle buffer, records dealt round-robin to ranks."""

    def __init__(self, open_stream: Callable[[], Iterable[ImageTextRecord]], make_pair: PairMaker, cfg: ClipDataConfig,
                 seed: int, local_batch: int, rank: int, world_size: int, state: dict[str, int] | None = None):
        self.open_stream = open_stream  # () -> fresh iterable of records
        self.make_pair = make_pair  # record -> tensors
        self.buffer_size = max(1, cfg.shuffle_buffer)  # shuffle buffer length
        self.seed, self.local_batch = seed, local_batch  # run seed; samples per rank and step
        self.rank, self.world_size = rank, world_size  # this rank's share of the stream
        self.epoch = (state or {}).get("epoch", 0)  # passes over the stream so far
        self.position = (state or {}).get("position", 0)  # shuffled records consumed in this epoch
        self.skip_next = self.position  # records to fast-forward after resuming

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def shuffled(self) -> Iterator[ImageTextRecord]:
        rng = np.random.default_rng([self.seed, self.epoch, 99])
        buffer: list[ImageTextRecord] = []
        for record in self.open_stream():
            buffer.append(record)
            if len(buffer) >= self.buffer_size:
                yield buffer.pop(int(rng.integers(len(buffer))))
        while buffer:
            yield buffer.pop(int(rng.integers(len(buffer))))

    def mine(self) -> Iterator[ImageTextRecord]:
        """This rank's records, epoch after epoch, forever (advances self.position)."""
        while True:
            produced = False
            for index, record in enumerate(self.shuffled()):
                produced = True
                if index < self.skip_next or index % self.world_size != self.rank:
                    continue
                self.position = index + 1
                yield record
            if not produced:
                raise UserError("the CLIP training stream yielded no records")
            self.epoch, self.position, self.skip_next = self.epoch + 1, 0, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        records = self.mine()
        while True:
            samples, skipped = [], []
            while len(samples) < self.local_batch:
                record = next(records)
                try:
                    samples.append((*self.make_pair(record, (self.epoch, self.position)), record.id))
                except (BadImage, ValueError, OSError) as err:
                    skipped.append((str(err).splitlines()[0][:120], record.id))
            yield self.make_pair.collate(samples, skipped)


def count_skips(batch: dict[str, Any], counter: SkipCounter) -> None:
    for reason, where in batch.pop("skipped", []):
        counter.skip(reason, where)
