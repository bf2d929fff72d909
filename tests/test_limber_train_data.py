"""Tests for LiMBeR training data: deterministic batches, caption sampling, DDP slicing, tokenization."""

import numpy as np
import pytest
import torch
from PIL import Image

from vlbridge.data.records import ImageTextRecord
from vlbridge.errors import UserError
from vlbridge.training import limber_data
from vlbridge.training.limber_data import CaptionBatcher, StepSamples, make_batch


def test_batches_depend_only_on_seed_and_step():
    counts = [1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5]
    first = CaptionBatcher(counts, global_batch_size=4, seed=7)
    second = CaptionBatcher(counts, global_batch_size=4, seed=7)
    # ask in a different order: a resumed run starts in the middle
    late = [second.samples(step) for step in (5, 4, 3, 0, 1, 2)]
    early = [first.samples(step) for step in (5, 4, 3, 0, 1, 2)]
    assert late == early
    other_seed = CaptionBatcher(counts, global_batch_size=4, seed=8)
    assert [other_seed.samples(s) for s in range(3)] != [first.samples(s) for s in range(3)]


def test_epoch_is_a_permutation_and_drops_the_incomplete_batch():
    counts = [3] * 10
    batcher = CaptionBatcher(counts, global_batch_size=4, seed=0)
    assert batcher.steps_per_epoch == 2
    seen = [i for step in range(2) for i in batcher.samples(step).record_indices]
    assert len(seen) == len(set(seen)) == 8
    order, choice = batcher.epoch_plan(0)
    assert sorted(order.tolist()) == list(range(10))
    assert seen == order[:8].tolist()
    # the next epoch reshuffles
    assert batcher.epoch_plan(1)[0].tolist() != order.tolist()
    assert batcher.samples(2).record_indices == batcher.epoch_plan(1)[0][:4].tolist()


def test_caption_choice_is_within_range_and_covers_every_caption():
    counts = [1, 2, 5]
    batcher = CaptionBatcher(counts, global_batch_size=3, seed=1)
    picks = {i: set() for i in range(3)}
    for step in range(200):
        samples = batcher.samples(step)
        for record, caption in zip(samples.record_indices, samples.caption_indices):
            assert 0 <= caption < counts[record]
            picks[record].add(caption)
    assert picks == {0: {0}, 1: {0, 1}, 2: set(range(5))}


def test_ranks_split_the_global_batch_of_one_process():
    counts = [2] * 24
    single = CaptionBatcher(counts, global_batch_size=8, seed=3)
    ranks = [CaptionBatcher(counts, global_batch_size=8, seed=3, rank=r, world_size=2) for r in range(2)]
    for step in range(7):
        whole = single.samples(step)
        parts = [r.samples(step) for r in ranks]
        assert parts[0].record_indices + parts[1].record_indices == whole.record_indices
        assert parts[0].caption_indices + parts[1].caption_indices == whole.caption_indices


def test_bad_batch_sizes_are_user_errors():
    with pytest.raises(UserError, match="divisible"):
        CaptionBatcher([1] * 10, global_batch_size=5, seed=0, rank=0, world_size=2)
    with pytest.raises(UserError, match="larger than the dataset"):
        CaptionBatcher([1] * 3, global_batch_size=4, seed=0)


def test_tokenize_captions_keeps_record_structure_and_truncates():
    records = [
        ImageTextRecord(id="a", image=b"", captions=["one two", "  ", "three"]),
        ImageTextRecord(id="b", image=b"", captions=["four five six seven"]),
    ]
    vocab = {}

    def tokenize(texts):
        return [[vocab.setdefault(w, len(vocab)) for w in t.split()] for t in texts]

    ids = limber_data.tokenize_captions(tokenize, records, max_tokens=3)
    assert list(ids) == [[[0, 1], [2]], [[3, 4, 5]]]
    assert ids.counts().tolist() == [2, 1] and ids.num_captions == 3
    assert ids[-1] == [[3, 4, 5]] and ids[0:1] == [[[0, 1], [2]]]
    with pytest.raises(IndexError):
        ids[2]


def test_tokenize_captions_packs_batch_by_batch(monkeypatch):
    """The tokenizer sees at most TOKENIZE_BATCH captions per call; the packing is the same as one call's."""
    monkeypatch.setattr(limber_data, "TOKENIZE_BATCH", 3)
    rng = np.random.default_rng(0)
    records = [ImageTextRecord(id=str(i), image=b"", captions=[" ".join(["w"] * int(n)) for n in rng.integers(0, 6, size=i % 4)])
               for i in range(40)]  # 0-3 captions of 0-5 words each (empty captions are dropped)
    calls = []

    def tokenize(texts):
        calls.append(len(texts))
        return [[70000 + len(t)] * len(t.split()) for t in texts]  # ids beyond int16, different per caption

    packed = limber_data.tokenize_captions(tokenize, records, max_tokens=4)
    expected = [[[70000 + len(c.strip())] * min(4, len(c.split())) for c in r.captions if c.strip()] for r in records]
    assert list(packed) == expected
    assert max(calls) <= 5 and sum(calls) == packed.num_captions  # a flush happens once >= 3 captions are pending
    assert packed.ids.dtype == np.int32 and packed.ids.nbytes == 4 * sum(len(c) for r in expected for c in r)


def test_make_batch_from_features_and_from_pixels():
    records = [ImageTextRecord(id=f"r{i}", image=Image.new("RGB", (4, 4), (i * 40, 0, 0)), captions=["x"]) for i in range(4)]
    caption_ids = [[[i, i + 1], [9]] for i in range(4)]
    features = torch.arange(4 * 3, dtype=torch.float32).view(4, 3)
    samples = StepSamples(record_indices=[2, 0], caption_indices=[1, 0])
    batch = make_batch(samples, records, caption_ids, features=features)
    assert batch["id"] == ["r2", "r0"]
    assert batch["input_ids"] == [[9], [0, 1]]
    assert torch.equal(batch["image_features"], features[[2, 0]])

    def preprocess(image):
        return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)

    batch = make_batch(samples, records, caption_ids, preprocess=preprocess)
    assert batch["pixel_values"].shape == (2, 3, 4, 4)
    assert batch["pixel_values"][0, 0, 0, 0] == 80.0 and batch["pixel_values"][1, 0, 0, 0] == 0.0


def test_captionless_records_are_dropped_and_all_empty_is_an_error():
    records = [ImageTextRecord(id="a", image=b"", captions=[" "]), ImageTextRecord(id="b", image=b"", captions=["ok"])]
    assert [r.id for r in limber_data.drop_captionless(records)] == ["b"]
    with pytest.raises(UserError, match="no records with captions"):
        limber_data.drop_captionless(records[:1])


def test_unreadable_images_are_skipped_for_the_tuned_encoder():
    good = ImageTextRecord(id="g", image=Image.new("RGB", (2, 2)), captions=["x"])
    bad = ImageTextRecord(id="b", image=b"not an image", captions=["x"])
    assert [r.id for r in limber_data.keep_readable_images([bad, good])] == ["g"]


def test_stack_features_follows_record_order_and_drops_missing():
    records = [ImageTextRecord(id=i, image=b"", captions=["x"]) for i in ("a", "b", "c")]
    by_id = {"c": torch.ones(2), "a": torch.zeros(2)}
    kept, stacked = limber_data.stack_features(records, by_id)
    assert [r.id for r in kept] == ["a", "c"]
    assert torch.equal(stacked, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))


def test_shapes_records_load_with_captions():
    records = limber_data.load_caption_records("shapes", "train", n=5, seed=0, image_size=32)
    assert len(records) == 5 and all(r.captions for r in records)
    assert limber_data.dataset_cache_name("shapes", 0, 32) != limber_data.dataset_cache_name("shapes", 0, 64)


def test_format_specs_load_through_vlbridge_data_formats(tmp_path):
    from vlbridge.data.formats import export_records
    from vlbridge.data.shapes import image_text_records

    source = image_text_records(4, split="train", seed=0, image_size=32)
    summary = export_records(source, tmp_path / "wds", "wds", progress=False)
    records = limber_data.load_caption_records(summary.read_back, "train")
    assert sorted(r.id for r in records) == sorted(r.id for r in source)
    assert {r.id: r.captions for r in records} == {r.id: r.captions for r in source}
    with pytest.raises(UserError, match="no records for split 'test'"):
        limber_data.load_caption_records(summary.read_back, "test")
    with pytest.raises(UserError, match="unknown dataset spec"):
        limber_data.load_caption_records("nonsense:thing", "train")
