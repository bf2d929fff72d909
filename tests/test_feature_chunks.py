"""Feature chunks carry a checksum: a chunk whose bytes were overwritten, or one a killed writer
left truncated, is detected and recomputed with a warning (never reused), before and after the
store is marked complete; `load=False` leaves features on disk and `StoredFeatures` reads them
back, one verified chunk at a time, equal to the in-memory result."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from vlbridge.data.feature_chunks import DamagedChunk, load_chunk, save_chunk
from vlbridge.data.features import INDEX_FILE, FeatureStore
from vlbridge.errors import UserError
from vlbridge.models.registry import build_encoder

from test_features import counted, make_records, weights  # noqa: F401 (a fixture)


def overwrite_tail(path, count: int = 8) -> None:
    """Flip the last `count` bytes of a file (feature bytes: the header is at the start)."""
    data = bytearray(path.read_bytes())
    data[-count:] = bytes(255 - b for b in data[-count:])
    path.write_bytes(bytes(data))


def test_chunk_round_trip_and_checksum(tmp_path):
    features = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    path = tmp_path / "c.safetensors"
    save_chunk(path, ["a", "b", "c"], features, {"d": "bad image"})
    ids, loaded, skipped = load_chunk(path)
    assert ids == ["a", "b", "c"] and torch.equal(loaded, features) and skipped == {"d": "bad image"}
    overwrite_tail(path)
    with pytest.raises(DamagedChunk, match="checksum"):
        load_chunk(path)
    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.raises(DamagedChunk, match="does not load"):
        load_chunk(path)


def test_overwritten_chunk_in_complete_store_is_recomputed(tmp_path, weights, caplog):
    encoder, calls = counted(build_encoder(f"timm:test_resnet@{weights}:32px"))
    records = make_records(7)
    store = FeatureStore(tmp_path, chunk_size=3)
    first = store.extract(encoder, "toy", "train", records, batch_size=3)
    overwrite_tail(first.stats.path / "chunk-00001.safetensors")
    calls.clear()
    with caplog.at_level(logging.WARNING):
        again = store.extract(encoder, "toy", "train", records, batch_size=3)
    assert calls == [3]  # chunk 1 only
    assert "chunk-00001.safetensors: content differs from its checksum" in caplog.text
    assert list(again.features) == list(first.features)
    assert all(torch.equal(again.features[k], first.features[k]) for k in first.features)
    assert again.stats.computed == 3


def test_truncated_chunk_of_killed_store_is_caught_before_index(tmp_path, weights, caplog):
    encoder, calls = counted(build_encoder(f"timm:test_resnet@{weights}:32px"))
    records = make_records(7)
    reference = FeatureStore(tmp_path / "ref", chunk_size=3).extract(encoder, "toy", "train", records)
    store = FeatureStore(tmp_path / "run", chunk_size=3)

    def kill_after_second_chunk(chunk: int) -> None:
        if chunk == 1:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        store.extract(encoder, "toy", "train", records, on_chunk_done=kill_after_second_chunk)
    folder = store.last_stats.path if store.last_stats else next((tmp_path / "run").iterdir())
    assert not (folder / INDEX_FILE).exists()
    chunk = folder / "chunk-00000.safetensors"
    chunk.write_bytes(chunk.read_bytes()[:-5])  # the store was killed while (or after) this chunk was cut short
    calls.clear()
    with caplog.at_level(logging.WARNING):
        resumed = store.extract(encoder, "toy", "train", records)
    assert sorted(calls) == [1, 3]  # chunk 0 again, and the missing chunk 2
    assert "chunk-00000.safetensors does not load" in caplog.text
    assert all(torch.equal(resumed.features[k], reference.features[k]) for k in reference.features)
    index = json.loads((folder / INDEX_FILE).read_text())
    assert index["chunk_ids"] == [["img000", "img001", "img002"], ["img003", "img004", "img005"], ["img006"]]


def test_stored_features_stream_equals_in_memory(tmp_path, weights):
    encoder = build_encoder(f"timm:test_resnet@{weights}:32px")
    records = make_records(8)
    store = FeatureStore(tmp_path, chunk_size=3)
    on_disk = store.extract(encoder, "toy", "train", records, load=False)
    assert on_disk.features == {}
    stored = on_disk.stored
    assert stored.chunk_rows == [3, 3, 2] and stored.ids == [r.id for r in records]
    in_memory = store.extract(encoder, "toy", "train", records)
    assert torch.equal(stored.read_chunk(1), torch.stack([in_memory.features[r.id] for r in records[3:6]]))
    assert stored.nbytes_float32 == 8 * 4 * stored.feature_shape[0]
    overwrite_tail(stored.folder / "chunk-00002.safetensors")
    with pytest.raises(UserError, match="vlbridge extract"):
        stored.read_chunk(2)


def test_feature_view_equals_the_loaded_features_and_holds_at_most_its_capacity(tmp_path, weights):
    encoder = build_encoder(f"timm:test_resnet@{weights}:32px")
    records = make_records(11)
    store = FeatureStore(tmp_path, chunk_size=3)  # 4 chunks
    loaded = store.extract(encoder, "toy", "train", records, batch_size=3).features
    view = store.extract(encoder, "toy", "train", records, batch_size=3, load=False).stored.view(capacity=2)
    assert len(view) == len(loaded) and list(view) == list(loaded)
    held = []
    for image_id in loaded:  # store order: every chunk read once
        assert image_id in view and torch.equal(view[image_id], loaded[image_id])
        held.append(len(view.cache.chunks))
    assert max(held) == 2 and view.cache.reads == 4
    row = view[next(iter(loaded))]
    assert row.untyped_storage().nbytes() == row.numel() * 4  # a copy of one row, not a view of its chunk
    assert "missing" not in view and view.get("missing") is None
    with pytest.raises(KeyError):
        view["missing"]
