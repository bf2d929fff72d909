"""FeatureStore: features equal direct encoding, every key part invalidates, resume after a kill
recomputes only missing chunks, bad images are skipped and counted, VQA records share images,
and `vlbridge extract` works end to end. The encoder is timm's tiny `test_resnet` loaded from a
safetensors file through the registry (at 32 px for speed)."""

from __future__ import annotations

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from vlbridge.cli import main
from vlbridge.data.features import FeatureStore, extract_features
from vlbridge.data.records import ImageTextRecord, VQARecord
from vlbridge.models.registry import build_encoder


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("w") / "test_resnet.safetensors"
    save_file(timm.create_model("test_resnet", pretrained=False).state_dict(), str(path))
    return path


def counted(encoder):
    """Wrap encoder.encode to record the batch size of every call."""
    calls: list[int] = []
    original = encoder.encode

    def encode(pixels):
        calls.append(len(pixels))
        return original(pixels)

    encoder.encode = encode
    return encoder, calls


def make_records(n: int, prefix: str = "img") -> list[ImageTextRecord]:
    records = []
    for i in range(n):
        colour = ((37 * i) % 256, (91 * i) % 256, (13 * i + 50) % 256)
        image = Image.new("RGB", (24 + i % 5, 24), colour)
        image.putpixel((i % 20, 3), (255 - colour[0], 0, 0))
        records.append(ImageTextRecord(id=f"{prefix}{i:03d}", image=image, captions=[f"image {i}"]))
    return records


def direct(encoder, records):
    with torch.no_grad():
        return encoder(torch.stack([encoder.preprocess(r.image) for r in records]))


def test_features_equal_direct_encoding_and_are_reused(tmp_path, weights):
    encoder, calls = counted(build_encoder(f"timm:test_resnet@{weights}:32px"))
    records = make_records(10)
    store = FeatureStore(tmp_path, chunk_size=4)
    result = store.extract(encoder, "toy", "train", records, batch_size=3)
    assert calls == [3, 1, 3, 1, 2]  # batches never cross a chunk boundary
    assert (result.stats.computed, result.stats.reused) == (10, 0)
    expected = direct(encoder, records)
    assert list(result.features) == [r.id for r in records]
    assert torch.allclose(torch.stack(list(result.features.values())), expected, atol=1e-6)
    calls.clear()
    again = store.get_or_extract(encoder, "toy", "train", records, batch_size=3)
    assert calls == [] and store.last_stats.reused == 10 and store.last_stats.computed == 0
    assert all(torch.equal(again[k], result.features[k]) for k in again)
    assert sorted(p.name for p in result.stats.path.iterdir()) == [
        "chunk-00000.safetensors", "chunk-00001.safetensors", "chunk-00002.safetensors", "index.json", "key.json",
    ]


def test_every_key_part_invalidates(tmp_path, weights):
    records = make_records(6)
    store = FeatureStore(tmp_path, chunk_size=8)
    base, calls = counted(build_encoder(f"timm:test_resnet@{weights}:32px"))
    store.get_or_extract(base, "toy", "train", records)
    folders = {store.last_stats.path}

    def recomputes(encoder, dataset="toy", split="train", recs=records):
        encoder, calls = counted(encoder)
        store.get_or_extract(encoder, dataset, split, recs)
        folders.add(store.last_stats.path)
        return sum(calls) == len(recs) and store.last_stats.computed == len(recs)

    changed_state = {k: v.clone() for k, v in base.model.state_dict().items()}
    first_conv = next(k for k, v in changed_state.items() if v.ndim == 4)
    changed_state[first_conv] *= 1.01
    changed_weights = tmp_path / "changed.safetensors"
    save_file(changed_state, str(changed_weights))
    assert recomputes(build_encoder(f"timm:test_resnet@{changed_weights}:32px"))  # weights
    assert recomputes(build_encoder(f"timm:test_resnet@{weights}:64px"))  # preprocessing
    assert recomputes(build_encoder(f"timm:test_resnet@{weights}:grid:32px"))  # pooled -> grid
    assert recomputes(build_encoder(f"random:timm:test_resnet:32px"))  # random init
    assert recomputes(build_encoder(f"timm:test_resnet@{weights}:32px"), dataset="toy2")  # dataset
    assert recomputes(build_encoder(f"timm:test_resnet@{weights}:32px"), split="val")  # split
    assert recomputes(build_encoder(f"timm:test_resnet@{weights}:32px"), recs=records[::-1])  # id order
    assert recomputes(build_encoder(f"timm:test_resnet@{weights}:32px"), recs=records[:5])  # id subset
    assert len(folders) == 9
    # and nothing changed -> nothing computed
    same, calls = counted(build_encoder(f"timm:test_resnet@{weights}:32px"))
    store.get_or_extract(same, "toy", "train", records)
    assert calls == []


def test_resume_after_interruption_recomputes_only_missing_chunks(tmp_path, weights):
    records = make_records(11)
    reference = FeatureStore(tmp_path / "ref", chunk_size=3).get_or_extract(
        build_encoder(f"timm:test_resnet@{weights}:32px"), "toy", "train", records, batch_size=2
    )
    encoder, calls = counted(build_encoder(f"timm:test_resnet@{weights}:32px"))
    store = FeatureStore(tmp_path / "run", chunk_size=3)

    def kill_after_second_chunk(chunk: int) -> None:
        if chunk == 1:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        store.get_or_extract(encoder, "toy", "train", records, batch_size=2, on_chunk_done=kill_after_second_chunk)
    assert sum(calls) == 6  # chunks 0 and 1 done
    calls.clear()
    resumed = store.extract(encoder, "toy", "train", records, batch_size=2)
    assert calls == [2, 1, 2]  # chunk 2 (3 records in batches of 2) and chunk 3 (2 records) only
    assert (resumed.stats.computed, resumed.stats.reused) == (5, 6)
    assert list(resumed.features) == list(reference)
    assert all(torch.allclose(resumed.features[k], reference[k], atol=1e-6) for k in reference)


def test_bad_images_are_skipped_and_counted(tmp_path, weights):
    records = make_records(5)
    records[1] = ImageTextRecord(id="broken", image=b"definitely not a png")
    records[3] = ImageTextRecord(id="gone", image=tmp_path / "missing.png")
    encoder, calls = counted(build_encoder(f"timm:test_resnet@{weights}:32px"))
    store = FeatureStore(tmp_path, chunk_size=2)
    result = store.extract(encoder, "toy", "train", records, batch_size=4)
    assert set(result.features) == {"img000", "img002", "img004"}
    assert set(result.stats.skipped) == {"broken", "gone"}
    assert "missing image file" in result.stats.skipped["gone"]
    calls.clear()
    again = store.extract(encoder, "toy", "train", records)
    assert calls == [] and set(again.stats.skipped) == {"broken", "gone"}
    empty_chunk = FeatureStore(tmp_path / "e", chunk_size=1).extract(encoder, "toy", "train", records[1:2])
    assert empty_chunk.features == {} and list(empty_chunk.stats.skipped) == ["broken"]


def test_vqa_records_share_image_features(tmp_path, weights):
    images = make_records(3)
    questions = [
        VQARecord(question_id=f"q{i}", image_id=images[i % 3].id, image=images[i % 3].image, question="?", answers=["x"] * 10)
        for i in range(7)
    ]
    encoder, calls = counted(build_encoder(f"timm:test_resnet@{weights}:32px"))
    features = FeatureStore(tmp_path).get_or_extract(encoder, "toy-vqa", "val", questions)
    assert list(features) == ["img000", "img001", "img002"] and calls == [3]
    assert torch.allclose(torch.stack(list(features.values())), direct(encoder, images), atol=1e-6)


def test_grid_features_and_float16_storage(tmp_path, weights):
    encoder = build_encoder(f"timm:test_resnet@{weights}:grid:64px")
    records = make_records(4)
    features = FeatureStore(tmp_path, dtype=torch.float16).get_or_extract(encoder, "toy", "train", records)
    expected = direct(encoder, records)  # (4, 4, C)
    assert features["img000"].shape == (encoder.num_tokens, encoder.feature_dim) == expected.shape[1:]
    assert torch.allclose(torch.stack(list(features.values())), expected.half().float())
    out = extract_features(encoder, [r.image for r in records], [r.id for r in records], batch_size=3)
    assert out.ids == [r.id for r in records] and out.kept == [0, 1, 2, 3] and out.skipped == {}
    assert torch.allclose(out.features, expected, atol=1e-6)


def test_extract_command_end_to_end(tmp_path, weights, capsys):
    argv = ["extract", "--encoder", f"timm:test_resnet@{weights}:32px", "--dataset", "shapes", "--split", "val",
            "--n", "6", "--image-size", "32", "--cache", str(tmp_path), "--chunk-size", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "6 images: 6 computed, 0 reused, 0 skipped" in out and str(tmp_path) in out
    assert main(argv) == 0
    assert "6 images: 0 computed, 6 reused" in capsys.readouterr().out
    assert main(["extract", "--encoder", "nope:x", "--dataset", "shapes", "--cache", str(tmp_path)]) == 2
    assert "unknown encoder" in capsys.readouterr().err
