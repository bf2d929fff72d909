"""The FeatureStore's chunk files: checksummed writing, verified reading, and a bounded reader.

    save_chunk(path, ids, features, skipped)      # safetensors + metadata ids / skipped / sha256
    ids, features, skipped = load_chunk(path)     # DamagedChunk if it does not load or its sum differs
    stored = StoredFeatures(folder, index)        # a complete store, read one chunk at a time
    stored.ids, stored.chunk_rows, stored.read_chunk(c), stored.nbytes_float32

Every chunk carries, in its safetensors metadata, the sha256 of its feature bytes, its ids and
its skipped ids (`chunk_digest`). `load_chunk` recomputes it on every read, so a chunk whose bytes
were overwritten is never served silently, and a truncated file (a killed writer, a full disk)
fails to load; both raise `DamagedChunk`, which the FeatureStore answers by recomputing the
chunk with a warning (before the store's index.json is written, and when a complete store is
opened), and which a training reader turns into a UserError naming the folder.

`StoredFeatures` is how training and evaluation read a store too large to hold: it knows every
chunk's ids from the index (no feature bytes), and `read_chunk` loads (and verifies) one chunk.
`ChunkCache` keeps the newest few chunks (training's streaming reader, `training/limber_data`);
`FeatureView` (`stored.view()`) is a read-only {id: features} mapping through one, which the
evaluations take in place of the dict of every feature: memory is `capacity` chunks, whatever
the number of images.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from vlbridge.errors import UserError
from vlbridge.io import atomic_save_safetensors

CHUNK_NAME = "chunk-{:05d}.safetensors"  # file name of chunk i inside a key's folder


class DamagedChunk(Exception):
    """A chunk file that does not load, or whose content differs from its recorded checksum."""


def chunk_path(folder: Path, chunk: int) -> Path:
    return folder / CHUNK_NAME.format(chunk)


def chunk_digest(features: torch.Tensor, ids: list[str], skipped: dict[str, str]) -> str:
    """sha256 over the feature bytes (in storage dtype), the shape, the ids and the skipped ids."""
    digest = hashlib.sha256()
    flat = features.detach().contiguous().cpu().reshape(-1).view(torch.uint8)  # raw bytes, any dtype
    digest.update(json.dumps([list(features.shape), str(features.dtype), ids, skipped]).encode())
    digest.update(memoryview(flat.numpy()))
    return digest.hexdigest()


def save_chunk(path: Path, ids: list[str], features: torch.Tensor, skipped: dict[str, str]) -> str:
    """safetensors file with the stacked features, ids / skipped / sha256 as metadata (atomic); returns the sha256."""
    features = features.detach().contiguous().cpu()
    sha = chunk_digest(features, ids, skipped)
    metadata = {"ids": json.dumps(ids), "skipped": json.dumps(skipped), "sha256": sha}
    atomic_save_safetensors(path, {"features": features}, metadata=metadata)
    return sha


def load_chunk(path: Path) -> tuple[list[str], torch.Tensor, dict[str, str]]:
    """(ids, features (n, ...) in storage dtype, skipped) of a chunk; DamagedChunk when it is not intact."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            features = handle.get_tensor("features")
        ids, skipped = json.loads(metadata["ids"]), json.loads(metadata["skipped"])
    except FileNotFoundError:
        raise
    except Exception as err:  # safetensors errors, truncated headers, bad JSON, missing keys
        raise DamagedChunk(f"{path.name} does not load ({type(err).__name__}: {str(err)[:120]})") from err
    recorded = metadata.get("sha256")
    if recorded is None:
        raise DamagedChunk(f"{path.name} has no checksum (written by an older vlbridge)")
    if chunk_digest(features, ids, skipped) != recorded:
        raise DamagedChunk(f"{path.name}: content differs from its checksum (bytes overwritten?)")
    return ids, features, skipped


class StoredFeatures:
    """A complete FeatureStore folder, read one verified chunk at a time (nothing loaded up front)."""

    def __init__(self, folder: Path, index: dict):
        self.folder = Path(folder)  # the key's folder
        self.chunk_ids: list[list[str]] = index["chunk_ids"]  # kept ids of every chunk, in row order
        self.feature_shape: tuple[int, ...] = tuple(index["feature_shape"])  # (D,) or (N, D) per image
        self.ids = [i for ids in self.chunk_ids for i in ids]  # every kept id, in row order
        self.chunk_rows = [len(ids) for ids in self.chunk_ids]  # rows per chunk
        self.skipped: dict[str, str] = index.get("skipped", {})  # id -> reason, images that did not decode

    @property
    def nbytes_float32(self) -> int:
        """Bytes the whole store takes as float32 in memory (what the in-memory mode would hold)."""
        per_row = 4 * int(torch.tensor(self.feature_shape).prod()) if self.feature_shape else 4
        return per_row * len(self.ids)

    def read_chunk(self, chunk: int) -> torch.Tensor:
        """(rows, ...) float32 features of chunk `chunk`; UserError when it is damaged."""
        path = chunk_path(self.folder, chunk)
        try:
            ids, features, _ = load_chunk(path)
        except (DamagedChunk, FileNotFoundError) as err:
            raise UserError(f"feature cache {self.folder}: {err}; run `vlbridge extract` again to recompute it") from err
        if ids != self.chunk_ids[chunk]:
            raise UserError(f"{path} does not hold the ids its index says; run `vlbridge extract` again")
        return features.to(torch.float32)

    def read_all(self) -> torch.Tensor:
        """Every row stacked: (N, D) / (N, T, D) float32 (the in-memory mode)."""
        if not self.chunk_ids:
            return torch.zeros((0, *self.feature_shape))
        return torch.cat([self.read_chunk(c) for c in range(len(self.chunk_ids))])

    def view(self, capacity: int = 2) -> "FeatureView":
        """{id: features} read through a cache of `capacity` chunks (see FeatureView)."""
        return FeatureView(self, capacity)


class ChunkCache:
    """The newest `capacity` chunks of a `StoredFeatures`, read (and verified) when first asked for."""

    def __init__(self, stored, capacity: int):
        self.stored = stored  # vlbridge.data.feature_chunks.StoredFeatures
        self.capacity = max(1, capacity)  # chunks held at most
        self.chunks: OrderedDict[int, torch.Tensor] = OrderedDict()  # chunk -> (rows, ...) float32
        self.reads = 0  # chunk files read so far

    def get(self, chunk: int) -> torch.Tensor:
        if chunk in self.chunks:
            self.chunks.move_to_end(chunk)
            return self.chunks[chunk]
        tensor = self.stored.read_chunk(chunk)
        self.reads += 1
        self.chunks[chunk] = tensor
        while len(self.chunks) > self.capacity:
            self.chunks.popitem(last=False)
        return tensor


class FeatureView(Mapping):
    """Read-only {id: (D,) or (T, D) float32} over a complete store, holding at most `capacity` chunks.

    Rows come back as copies (a caller that keeps one keeps one row, not its chunk). Reads in
    store order touch each chunk once; scattered reads reload chunks (`cache.reads` counts them).
    """

    def __init__(self, stored: StoredFeatures, capacity: int = 2):
        self.stored = stored  # the store's chunks and ids
        self.cache = ChunkCache(stored, capacity)  # the chunks in memory
        self.where = {i: (chunk, row) for chunk, ids in enumerate(stored.chunk_ids)
                      for row, i in enumerate(ids)}  # id -> (chunk, row in chunk)

    def __getitem__(self, image_id: str) -> torch.Tensor:
        chunk, row = self.where[image_id]
        return self.cache.get(chunk)[row].clone()

    def __contains__(self, image_id: object) -> bool:
        return image_id in self.where

    def __iter__(self) -> Iterator[str]:
        return iter(self.stored.ids)

    def __len__(self) -> int:
        return len(self.where)
