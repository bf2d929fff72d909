"""Dataset names -> labelled records -> features, as the `vlbridge eval` commands resolve them."""

import pytest
import torch
from eval_helpers import single_thread, tiny_clip_bundle  # noqa: F401  (autouse fixture)
from PIL import Image

from vlbridge.data import shapes
from vlbridge.data.records import ImageTextRecord
from vlbridge.errors import AssetMissingError, UserError
from vlbridge.evaluation.features_io import embed_records, load_captioned, load_classification, seeded_subset


def test_shapes_and_its_shift_are_the_same_scenes():
    clean = load_classification("shapes", "test", 10, seed=4)
    shifted = load_classification("shapes-shift:sketch", "test", 10, seed=4)
    assert clean.classnames == shifted.classnames == shapes.class_names()
    assert [r.id + "-sketch" for r in clean.records] == [r.id for r in shifted.records]
    assert torch.equal(clean.labels(), shifted.labels())
    assert [r.label for r in clean.records] == [shapes.class_names()[i] for i in clean.labels().tolist()]


def test_shapes_default_sizes_and_captioned_records():
    assert len(load_classification("shapes", "val", None, 0).records) == 520
    records = load_captioned("shapes", "test", 5, 0)
    assert len(records) == 5 and all(len(r.captions) == 6 for r in records)


def test_seeded_subset_is_deterministic_and_keeps_order():
    items = list(range(100))
    subset = seeded_subset(items, 10, seed=1)
    assert subset == seeded_subset(items, 10, seed=1) == sorted(subset)
    assert subset != seeded_subset(items, 10, seed=2) and len(set(subset)) == 10
    assert seeded_subset(items, None, 1) == items and seeded_subset(items, 500, 1) == items


def test_imagefolder_with_split_folders(tmp_path):
    for split, count in (("train", 3), ("test", 2)):
        for name in ("cat", "sea_lion"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / f"{i}.png")
    train = load_classification(f"imagefolder:{tmp_path}", "train")
    test = load_classification(f"imagefolder:{tmp_path}", "test")
    assert train.classnames == test.classnames == ["cat", "sea lion"]
    assert len(train.records) == 6 and len(test.records) == 4
    assert test.labels().tolist() == [0, 0, 1, 1]
    with pytest.raises(UserError, match="no 'val' folder"):
        load_classification(f"imagefolder:{tmp_path}", "val")


def test_unsplit_imagefolder_is_split_disjointly_per_class(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(10):
            Image.new("RGB", (8, 8)).save(tmp_path / name / f"{i}.png")
    train = load_classification(f"imagefolder:{tmp_path}", "train", seed=1)
    test = load_classification(f"imagefolder:{tmp_path}", "test", seed=1)
    assert len(test.records) == 4 and torch.bincount(test.labels()).tolist() == [2, 2]
    assert not {r.id for r in train.records} & {r.id for r in test.records}
    assert len(train.records) + len(test.records) == 20


def test_embed_records_skips_unreadable_images_and_keeps_labels_aligned(tmp_path, caplog):
    good = Image.new("RGB", (40, 40), (200, 10, 10))
    records = [
        ImageTextRecord("a", good, ["x"], "red"),
        ImageTextRecord("b", tmp_path / "missing.png", ["y"], "blue"),
        ImageTextRecord("c", b"not an image", ["z"], "blue"),
        ImageTextRecord("d", good, ["w"], "red"),
    ]
    bundle = tiny_clip_bundle()
    features, kept = embed_records(bundle, records, batch_size=3)
    assert kept == [0, 3]
    torch.testing.assert_close(features, bundle.embed_images([good, good]))
    assert "skipped 2" in caplog.text


def test_unknown_names_are_user_errors():
    with pytest.raises(UserError, match="unknown dataset"):
        load_classification("cifar10", "test")
    with pytest.raises(UserError, match="did you mean shapes-shift"):
        load_classification("shapes:blur", "test")
    with pytest.raises(UserError, match="has splits train, test"):
        load_classification("fashion-mnist", "val")


@pytest.mark.assets
@pytest.mark.parametrize("name, n_classes", [("fashion-mnist", 10), ("animal-silhouettes", 10), ("openclipart", None)])
def test_embedded_datasets_have_class_lists(name, n_classes):
    try:
        test = load_classification(name, "test", 40, seed=0)
    except AssetMissingError as err:
        pytest.skip(str(err))
    if n_classes is not None:
        assert len(test.classnames) == n_classes
    assert len(test.records) == 40 and all(r.split == "test" for r in test.records)
    labels = test.labels()
    assert labels.min() >= 0 and labels.max() < len(test.classnames)
    assert len(set(labels.tolist())) > 1  # a seeded subset, not the first 40 of one class


def test_retrieval_reads_any_image_text_spec_of_formats(tmp_path):
    for i, caption in enumerate(["a red square", "a blue circle", "a green star"]):
        Image.new("RGB", (8, 8), (i * 80, 0, 0)).save(tmp_path / f"img{i}.png")
        (tmp_path / f"img{i}.txt").write_text(f"{caption}\n{caption} on white\n", encoding="utf-8")
    records = load_captioned(f"folder:{tmp_path}", "test", None, 0)
    assert sorted(r.captions[0] for r in records) == ["a blue circle", "a green star", "a red square"]
    assert all(len(r.captions) == 2 for r in records)
    assert len(load_captioned(f"folder:{tmp_path}", "test", 2, 0)) == 2
