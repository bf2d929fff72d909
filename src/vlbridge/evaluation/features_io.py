"""Evaluation data: a resolved `Dataset` -> cached image features, for `vlbridge eval` and the study.

Datasets come from the one resolver, `vlbridge.data.datasets.load_dataset` (the DATASET names of
`vlbridge eval`, listed in DATASET_HELP, are its specs). Features come from the FeatureStore
(`vlbridge.data.features`), keyed by the encoder, the dataset's resolved name, the split and the
record ids, so an evaluation repeated with the same CLIP and data never re-encodes an image,
and `vlbridge eval` computes exactly the features the study's CLIP table reads.

    features, kept = image_features(store, encoder, data, batch_size)   # rows of data.records[kept]
    labelled = labelled_features(store, encoder, data, batch_size, normalize=True)
    records = captioned(data)                                           # retrieval: records with captions

Records whose image does not decode are skipped and counted by the store and left out, with
their labels, of what these return.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
import torch.nn.functional as F

from vlbridge.data.datasets import Dataset
from vlbridge.data.features import FeatureStore
from vlbridge.errors import UserError
from vlbridge.evaluation.dataset_help import DATASET_HELP  # noqa: F401  (re-exported; defined apart, torch-free, for --help)
from vlbridge.evaluation.robustness import LabelledFeatures

log = logging.getLogger(__name__)

STORE_CHUNK_IMAGES = 1024  # about this many images per cache chunk (rounded to whole batches)


def eval_store(root, batch_size: int) -> FeatureStore:
    """A FeatureStore under `root` whose chunks hold whole batches (each batch = the images of one window)."""
    return FeatureStore(root, chunk_size=batch_size * max(1, STORE_CHUNK_IMAGES // batch_size))


def image_features(store: FeatureStore, encoder, data: Dataset, batch_size: int) -> tuple[torch.Tensor, list[int]]:
    """((K, ...) features, positions in data.records of the K records whose image decoded)."""
    records = data.record_list()
    by_id = store.get_or_extract(encoder, data.name, data.split or "all", records, batch_size=batch_size)
    kept = [i for i, record in enumerate(records) if _record_id(record) in by_id]
    if not kept:
        raise UserError(f"dataset {data.name!r}: none of the {len(records)} images could be opened")
    return torch.stack([by_id[_record_id(records[i])] for i in kept]), kept


def labelled_features(store: FeatureStore, encoder, data: Dataset, batch_size: int,
                      normalize: bool = False) -> LabelledFeatures:
    """Pooled features of a classification `Dataset` with their labels (L2-normalised rows if asked)."""
    features, kept = image_features(store, encoder, data, batch_size)
    if features.ndim != 2:
        raise ValueError(f"probes need pooled (N, D) features, got {tuple(features.shape)} from {encoder.encoder_id}")
    features = features.float()  # (N, D)
    return LabelledFeatures(F.normalize(features, dim=-1) if normalize else features, data.labels(kept))


def captioned(data: Dataset) -> Dataset:
    """The records of `data` that have at least one caption (retrieval needs image-caption pairs)."""
    records = [record for record in data.records if record.captions]
    if not records:
        raise UserError(f"dataset {data.name!r} has no captions; retrieval needs image-caption pairs")
    return replace(data, records=records)


def _record_id(record) -> str:
    return str(record.id)
