"""`SearchIndex`: CLIP image embeddings on disk with their metadata; exact or faiss top-k search.

An index folder (written by `vlbridge.api.index_build`, `vlbridge index build`):

    index.json                     what it holds: CLIP spec and encoder_id, dim, count, parts, kind, roots
    img_emb/img_emb_<k>.npy        (n_k, E) float32 unit image embeddings, part k (clip-retrieval's name)
    metadata/metadata_<k>.jsonl    one line per row: {"id", "key", "path", "caption", "source"}
    image.index                    the faiss index over every row (kinds "hnsw" and "ivf" only)
    images/<row>.<ext>             images that had no file of their own (in-memory, webdataset bytes)

Row ids are global and stable (0..count-1, in the order rows were added); an incremental add
appends a part. `path` is relative to the index folder for stored images, else the absolute
path of the source file; `key` is that file path or `source#record-id` (a webdataset shard key).

Search: `search(queries (Q, E), k)` returns, per query, the k best rows by cosine similarity
(all embeddings are unit vectors, so the inner product). Kind "exact" is a matmul + top-k over
every row; "hnsw" / "ivf" ask the faiss index (approximate, see docs/BENCHMARKS.md for recall).
`image_file(row)` never returns a file outside the index folder or the folders the indexed
files were found in (`roots` in index.json), whatever the metadata says.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vlbridge.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the folder layout changes
INFO_FILE = "index.json"
EMB_DIR = "img_emb"  # clip-retrieval's embeddings sub-folder name
META_DIR = "metadata"
FAISS_FILE = "image.index"  # clip-retrieval's image index file name
STORED_DIR = "images"  # copies of images that had no file
KINDS = ("exact", "hnsw", "ivf")


def emb_path(root: Path, part: int) -> Path:
    return Path(root) / EMB_DIR / f"img_emb_{part}.npy"


def meta_path(root: Path, part: int) -> Path:
    return Path(root) / META_DIR / f"metadata_{part}.jsonl"


def read_info(root: str | Path) -> dict | None:
    """index.json of `root` (None when there is none)."""
    path = Path(root) / INFO_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not a readable index description ({err}); rebuild the index") from err


@dataclass
class Hit:
    """One search result: row id and cosine similarity."""

    id: int  # global row id
    score: float  # cosine similarity to the query


class SearchIndex:
    """Embeddings (N, E) + metadata rows + an optional faiss index, read from an index folder."""

    def __init__(self, root: Path, info: dict, embeddings: np.ndarray, metadata: list[dict], faiss_index=None):
        self.root = Path(root)  # the index folder
        self.info = info  # index.json
        self.embeddings = embeddings  # (N, E) float32 unit rows
        self.metadata = metadata  # N dicts: id, key, path, caption, source
        self.faiss_index = faiss_index  # faiss index over the same rows, or None (exact search)
        self._allowed_dirs = {Path(d) for d in info.get("roots", [])} | {(self.root / STORED_DIR).resolve()}

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, root: str | Path, use_faiss: bool = True) -> "SearchIndex":
        """Read an index folder; with use_faiss=False (or no faiss installed) search is exact."""
        root = Path(root)
        info = read_info(root)
        if info is None:
            raise UserError(f"{root} is not a search index (no {INFO_FILE}); build one with `vlbridge index build`")
        if info.get("format") != FORMAT_VERSION:
            raise UserError(f"index {root} has format {info.get('format')}, this vlbridge reads {FORMAT_VERSION}; rebuild it")
        chunks, metadata = [], []
        for part in range(len(info["parts"])):
            chunks.append(np.load(emb_path(root, part)).astype(np.float32, copy=False))
            lines = meta_path(root, part).read_text(encoding="utf-8").splitlines()
            metadata.extend(json.loads(line) for line in lines if line)
        embeddings = np.concatenate(chunks) if chunks else np.zeros((0, info["dim"]), np.float32)
        if len(embeddings) != info["count"] or len(metadata) != info["count"]:
            raise UserError(
                f"index {root} is inconsistent: index.json says {info['count']} rows, found {len(embeddings)} "
                f"embeddings and {len(metadata)} metadata lines; rebuild it"
            )
        faiss_index = _read_faiss(root, info) if use_faiss and info.get("kind", "exact") != "exact" else None
        return cls(root, info, np.ascontiguousarray(embeddings), metadata, faiss_index)

    # ------------------------------------------------------------------ facts
    def __len__(self) -> int:
        return len(self.metadata)

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    @property
    def encoder_id(self) -> str:
        """The CLIP image tower that made the embeddings (queries must come from the same CLIP)."""
        return self.info["encoder_id"]

    @property
    def kind(self) -> str:
        """How search runs: "exact", or the faiss index kind in use."""
        return self.info.get("kind", "exact") if self.faiss_index is not None else "exact"

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray | torch.Tensor, k: int = 10, exact: bool | None = None) -> list[list[Hit]]:
        """The k best rows for each query (Q, E), best first; exact=True forces the matmul."""
        queries = _as_queries(queries, self.dim)
        k = min(int(k), len(self))
        if k <= 0:
            return [[] for _ in range(len(queries))]
        if self.faiss_index is not None and not exact:
            scores, rows = self.faiss_index.search(queries, k)
        else:
            scores, rows = self.search_exact(queries, k)
        return [[Hit(int(r), float(s)) for r, s in zip(row_ids, row_scores) if r >= 0] for row_ids, row_scores in zip(rows, scores)]

    def search_exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k), rows (Q, k)): inner products with every row, top k."""
        similarities = torch.from_numpy(queries) @ torch.from_numpy(self.embeddings).T  # (Q, N)
        top = similarities.topk(k, dim=1)
        return top.values.numpy(), top.indices.numpy()

    # ------------------------------------------------------------------ rows
    def entry(self, row: int) -> dict:
        """The metadata of row `row` (UserError for ids outside the index)."""
        if not 0 <= int(row) < len(self):
            raise UserError(f"no image {row} in this index (ids are 0..{len(self) - 1})")
        return self.metadata[int(row)]

    def image_file(self, row: int) -> Path:
        """The image file of row `row`; UserError when it is missing or lies outside the allowed folders."""
        path = Path(self.entry(row)["path"])
        resolved = (path if path.is_absolute() else self.root / path).resolve()
        if resolved.parent not in self._allowed_dirs:
            raise UserError(f"image {row} lies outside the index and its data folders; refusing to serve it")
        if not resolved.is_file():
            raise UserError(f"image {row} is missing on disk ({path.name})")
        return resolved


def _as_queries(queries, dim: int) -> np.ndarray:
    """(Q, E) C-contiguous float32 numpy from a tensor / array / single (E,) vector."""
    if isinstance(queries, torch.Tensor):
        queries = queries.detach().float().cpu().numpy()
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None]
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise UserError(f"queries must be (Q, {dim}) embeddings, got shape {tuple(queries.shape)}")
    return np.ascontiguousarray(queries)


def _read_faiss(root: Path, info: dict):
    """The faiss index of `root` with its search parameters set (None when faiss is not installed)."""
    try:
        import faiss
    except ImportError:
        log.warning("faiss is not installed: searching index %s exactly (pip install faiss-cpu for %s)", root, info["kind"])
        return None
    path = root / FAISS_FILE
    if not path.is_file():
        raise UserError(f"index {root} is of kind {info['kind']} but has no {FAISS_FILE}; rebuild it")
    index = faiss.read_index(str(path))
    if index.ntotal != info["count"]:
        raise UserError(f"{path} holds {index.ntotal} rows, index.json {info['count']}; rebuild the index")
    apply_search_params(index, info.get("faiss", {}))
    return index


def apply_search_params(index, params: dict) -> None:
    """Set nprobe (IVF) / efSearch (HNSW) from index.json's "faiss" entry."""
    import faiss

    if "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    if "ef_search" in params and hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(params["ef_search"])


def unit_rows(vectors: Sequence) -> np.ndarray:
    """(N, E) float32 rows scaled to unit length (zero rows stay zero)."""
    array = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)
