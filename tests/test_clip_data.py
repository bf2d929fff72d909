"""CLIP training data: batches are pure functions of (seed, step, rank), streams resume exactly,
bad samples are replaced and counted, the embedded default mixes its sources, RunLogger writes."""

from __future__ import annotations

import csv

import pytest
import torch
from helpers.clip_fixtures import records_with_bad, solid_images

from vlbridge.data.records import ImageTextRecord, SkipCounter
from vlbridge.errors import AssetMissingError
from vlbridge.models.clip import create_clip, train_transform
from vlbridge.training import clip_data
from vlbridge.training.clip_data import ClipDataConfig, EpochOrder, PairDataset, PairMaker, StepSampler, StreamBatches, count_skips
from vlbridge.training.metrics_log import RunLogger


@pytest.fixture(scope="module")
def bundle():
    return create_clip("vl-micro-vit")


def maker(bundle, seed=0):
    return PairMaker(train_transform(bundle.model), bundle.tokenizer, seed, cache_side=64)


def records(n=10):
    return [ImageTextRecord(f"r{i}", im, [f"caption {i} a", f"caption {i} b", f"caption {i} c"]) for i, im in enumerate(solid_images(n))]


def batches(dataset, start, end, global_batch, rank, world):
    return [dataset[positions] for positions in StepSampler(start, end, global_batch, rank, world)]


def test_rank_slices_concatenate_to_the_single_process_batch(bundle):
    dataset = PairDataset(records(), maker(bundle), seed=3)
    single = batches(dataset, 0, 4, 6, 0, 1)
    ranks = [batches(PairDataset(records(), maker(bundle), seed=3), 0, 4, 6, r, 2) for r in range(2)]
    for step in range(4):
        assert torch.equal(single[step]["pixel_values"], torch.cat([ranks[0][step]["pixel_values"], ranks[1][step]["pixel_values"]]))
        assert torch.equal(single[step]["input_ids"], torch.cat([ranks[0][step]["input_ids"], ranks[1][step]["input_ids"]]))
        assert single[step]["id"] == ranks[0][step]["id"] + ranks[1][step]["id"]


def test_resuming_at_a_step_replays_the_same_batches(bundle):
    full = batches(PairDataset(records(), maker(bundle), seed=1), 0, 5, 4, 0, 1)
    resumed = batches(PairDataset(records(), maker(bundle), seed=1), 3, 5, 4, 0, 1)
    for a, b in zip(full[3:], resumed):
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["input_ids"], b["input_ids"])
    other_seed = batches(PairDataset(records(), maker(bundle, seed=2), seed=2), 0, 1, 4, 0, 1)
    assert not torch.equal(full[0]["pixel_values"], other_seed[0]["pixel_values"])


def test_every_record_once_per_epoch_and_captions_come_from_the_record(bundle):
    order = EpochOrder(10, seed=0)
    for epoch in range(3):
        assert sorted(order(epoch * 10 + i) for i in range(10)) == list(range(10))
    assert [order(i) for i in range(10)] != [order(10 + i) for i in range(10)]  # reshuffled each epoch
    data = records(10)
    dataset = PairDataset(data, maker(bundle), seed=0)
    batch = dataset[list(range(30))]  # three epochs
    by_id = {r.id: r for r in data}
    chosen = set()
    for record_id, ids in zip(batch["id"], batch["input_ids"]):
        options = [tuple(bundle.tokenizer([c])[0].tolist()) for c in by_id[record_id].captions]
        assert tuple(ids.tolist()) in options
        chosen.add(tuple(ids.tolist()))
    assert len(chosen) > 10  # more than one caption per record gets used


def test_bad_images_are_replaced_and_reported(bundle, tmp_path):
    dataset = PairDataset(records_with_bad(6, tmp_path / "bad.png"), maker(bundle), seed=0)
    batch = dataset[list(range(8))]  # one full epoch: both bad records come up
    assert batch["pixel_values"].shape == (8, 3, 32, 32)
    assert not {"bad-bytes", "bad-missing"} & set(batch["id"])
    counter = SkipCounter("test")
    count_skips(batch, counter)
    assert counter.total == 2 and "skipped" not in batch
    assert any("missing image file" in reason for reason in counter.as_dict())


def test_stream_batches_deal_records_to_ranks_and_resume(bundle):
    data = records(9)
    cfg = ClipDataConfig(shuffle_buffer=4)

    def stream(rank, world, state=None):
        return StreamBatches(lambda: iter(data), maker(bundle), cfg, seed=0, local_batch=2, rank=rank, world_size=world, state=state)

    single = stream(0, 1)
    single_batches = [b for b, _ in zip(single, range(6))]  # 12 samples: crosses into epoch 1
    assert single.epoch == 1
    seen = sum((b["id"] for b in single_batches), [])
    assert sorted(seen[:9]) == sorted(r.id for r in data)  # one epoch holds each record once
    ranks = [stream(r, 2) for r in range(2)]
    first = [next(iter(s))["id"] for s in ranks]
    assert set(first[0]).isdisjoint(first[1])
    iterator = iter(single := stream(0, 1))
    for _ in range(3):
        next(iterator)
    state = single.state()
    expected = next(iterator)
    resumed = next(iter(stream(0, 1, state)))
    assert resumed["id"] == expected["id"] and torch.equal(resumed["pixel_values"], expected["pixel_values"])


def test_embedded_default_mixes_sources_and_skips_missing_assets(monkeypatch):
    from vlbridge.data import embedded

    def missing(**kwargs):
        raise AssetMissingError("asset openclipart is missing: install it with apt-get install -y openclipart-png")

    twemoji = [ImageTextRecord(f"twemoji/{i}", solid_images(1)[0], ["grinning face"]) for i in range(3)]
    monkeypatch.setattr(embedded, "twemoji_records", lambda **kwargs: twemoji)
    monkeypatch.setattr(embedded, "openclipart_records", missing)
    mixed = clip_data.load_source(ClipDataConfig(shapes_n=5, shapes_image_size=32))
    assert [r.id for r in mixed[5:]] == [r.id for r in twemoji]
    assert all(r.split == "train" and r.domain == "in" for r in mixed[:5])


def test_run_logger_widens_header_and_truncates_on_resume(tmp_path):
    logger = RunLogger(tmp_path, is_main=True, tensorboard=False)
    for step in (1, 2, 3):
        logger.log(step, {"loss": 1.0 / step})
    logger.log(3, {"zeroshot_top1": 0.5})
    logger.close()
    with (tmp_path / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["step"] for r in rows] == ["1", "2", "3", "3"] and rows[3]["zeroshot_top1"] == "0.5" and rows[0]["zeroshot_top1"] == ""
    resumed = RunLogger(tmp_path, is_main=True, resume_step=1, tensorboard=False)
    resumed.log(2, {"loss": 9.0})
    with (tmp_path / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["step"], r["loss"]) for r in rows] == [("1", "1.0"), ("2", "9.0")]
    RunLogger(tmp_path / "other", is_main=False).log(1, {"loss": 1.0})
    assert not (tmp_path / "other").exists()


def test_worker_processes_give_the_same_batches(bundle):
    dataset = PairDataset(records(), maker(bundle), seed=4)
    in_process = list(clip_data.map_style_batches(dataset, StepSampler(1, 4, 4, 0, 1), workers=0))
    with_worker = list(clip_data.map_style_batches(PairDataset(records(), maker(bundle), seed=4), StepSampler(1, 4, 4, 0, 1), workers=1))
    for a, b in zip(in_process, with_worker, strict=True):
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["id"] == b["id"]


def test_dataset_specs_and_query_word_filter_go_through_the_resolver(monkeypatch):
    """Every source, the embedded composite's parts included, is read by datasets.load_dataset."""
    from vlbridge.data import datasets, shapes

    calls, filtered = [], []
    web = records(4)
    real_load_dataset = datasets.load_dataset

    def load_dataset(spec, task="image_text", **request):
        calls.append((spec, task, request))
        if spec == "list-spec":
            return datasets.Dataset(spec, None, list(web))
        if spec == "stream-spec":
            return datasets.Dataset(spec, None, (r for r in web))
        if spec in ("twemoji", "openclipart"):
            return datasets.Dataset(spec, "train", list(web) if spec == "twemoji" else [])
        return real_load_dataset(spec, task, **request)

    def filter_by_query_words(items, top_m):
        items = list(items)
        filtered.append(([r.id for r in items], top_m))
        return items[:top_m]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(clip_data, "filter_by_query_words", filter_by_query_words)
    assert [r.id for r in clip_data.load_source(ClipDataConfig(source="list-spec"))] == [r.id for r in web]
    factory = clip_data.load_source(ClipDataConfig(source="stream-spec"))
    assert callable(factory) and [r.id for r in factory()] == [r.id for r in web]  # streamed, reopened per epoch
    assert [r.id for r in clip_data.load_source(ClipDataConfig(source="stream-spec", query_top_m=2))] == ["r0", "r1"]
    assert calls == [("list-spec", "image_text", {}), ("stream-spec", "image_text", {}),
                     ("stream-spec", "image_text", {}), ("stream-spec", "image_text", {})]
    calls.clear()
    mixed = clip_data.load_source(ClipDataConfig(shapes_n=3, shapes_image_size=32, query_top_m=1))
    assert len(mixed) == 4 and mixed[-1].id == "r0"  # shapes untouched, web records filtered
    assert filtered[-1] == ([r.id for r in web], 1)
    assert calls == [("shapes?max_objects=2", "image_text", {"split": "train", "n": 3, "seed": 0, "image_size": 32}),
                     ("twemoji", "image_text", {"split": "train"}), ("openclipart", "image_text", {"split": "train"})]
    direct = shapes.image_text_records(3, split="train", seed=0, image_size=32, max_objects=2)
    assert [(r.id, r.captions, r.image.tobytes()) for r in mixed[:3]] == [(r.id, r.captions, r.image.tobytes()) for r in direct]


def test_oversized_files_are_refused_before_decoding(bundle, tmp_path):
    from vlbridge.data.records import BadImage

    path = tmp_path / "big.png"
    solid_images(1, size=40)[0].save(path)  # 40 x 46 = 1840 pixels
    small_limit = PairMaker(train_transform(bundle.model), bundle.tokenizer, 0, cache_side=64, max_pixels=1000)
    with pytest.raises(BadImage, match="larger than 0.001 megapixels"):
        small_limit(ImageTextRecord("big", path, ["a disc"]), (0,))
    pixels, ids = maker(bundle)(ImageTextRecord("big", path, ["a disc"]), (0,))  # default limit: fine
    assert pixels.shape == (3, 32, 32) and ids.dtype == torch.long


def test_batches_hold_normalised_float_pixels(bundle):
    dataset = PairDataset(records(), maker(bundle), seed=0)
    batch = dataset[[0, 1, 2]]
    assert batch["pixel_values"].dtype == torch.float32 and batch["pixel_values"].shape[:2] == (3, 3)
    assert float(batch["pixel_values"].min()) < -1.0  # normalised, not uint8 or [0, 1]
