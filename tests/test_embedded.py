"""Tests for the embedded data-set readers (`vlbridge.data.embedded`).

Format code (IDX parsing, the numpy-only unpickler, caption cleaning, hash splits) is tested on
tiny files the tests write; the readers are also run on the real installed data (marker
`assets`, skipped with the install command when missing), reading at most a few hundred images.
"""

import collections
import gzip
import json
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from vlbridge import assets
from vlbridge.data import embedded
from vlbridge.data.records import open_image
from vlbridge.errors import AssetMissingError


def need(name: str):
    asset = assets.get_asset(name)
    if asset.locate() is None:
        pytest.skip(asset.missing_message())
    return asset.locate()


def idx_bytes(array: np.ndarray, type_code: int, dtype: str) -> bytes:
    """Reference IDX writer: magic (0, 0, type, ndim), big-endian dims, big-endian data."""
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


# ------------------------------------------------------------------------------ IDX
@pytest.mark.parametrize(
    "array, type_code, dtype",
    [
        (np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4), 0x08, ">u1"),
        (np.array([-3, 0, 7], dtype=np.int8), 0x09, ">i1"),
        (np.array([[1, -2], [300, 40000 - 65536]], dtype=np.int16), 0x0B, ">i2"),
        (np.array([1, -70000, 2**30], dtype=np.int32), 0x0C, ">i4"),
        (np.array([[0.5, -1.25]], dtype=np.float32), 0x0D, ">f4"),
        (np.array([3.141592653589793], dtype=np.float64), 0x0E, ">f8"),
    ],
)
def test_idx_round_trip_plain_and_gzipped(tmp_path, array, type_code, dtype):
    raw = idx_bytes(array, type_code, dtype)
    (tmp_path / "a.idx").write_bytes(raw)
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(raw))
    for name in ("a.idx", "a.idx.gz"):
        parsed = embedded.read_idx(tmp_path / name)
        assert parsed.shape == array.shape and parsed.dtype.isnative
        np.testing.assert_array_equal(parsed, array)


def test_idx_rejects_bad_files():
    good = idx_bytes(np.zeros((2, 2), np.uint8), 0x08, ">u1")
    with pytest.raises(ValueError, match="expected an IDX file"):
        embedded.parse_idx(b"\x01\x00" + good[2:])
    with pytest.raises(ValueError, match="unknown IDX type code 0x07"):
        embedded.parse_idx(good[:2] + b"\x07" + good[3:])
    with pytest.raises(ValueError, match=r"shape \(2, 2\) \(4 data bytes\), file has 3"):
        embedded.parse_idx(good[:-1])


def write_fake_fashion_mnist(folder, n_train=6, n_test=4):
    """Tiny Fashion-MNIST folder in the Debian layout (gzipped IDX files)."""
    rng = np.random.default_rng(0)
    data = {}
    for prefix, count in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) * 3 % 10).astype(np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images, 0x08, ">u1")))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels, 0x08, ">u1")))
        data[prefix] = (images, labels)
    return data


def test_fashion_mnist_reader_on_tiny_files(tmp_path, monkeypatch):
    data = write_fake_fashion_mnist(tmp_path)
    monkeypatch.setattr(assets, "FASHION_MNIST_DIR", tmp_path)
    records = embedded.fashion_mnist_records("test")
    images, labels = data["t10k"]
    assert [r.id for r in records] == [f"fashion-mnist/test/{i:05d}" for i in range(4)]
    assert [r.label for r in records] == [embedded.FASHION_MNIST_CLASSES[int(y)] for y in labels]
    assert all(r.captions == [r.label] and r.split == "test" for r in records)
    for record, gray in zip(records, images):
        pixels = np.asarray(open_image(record.image))
        assert pixels.shape == (28, 28, 3)
        for channel in range(3):
            np.testing.assert_array_equal(pixels[..., channel], gray)
    assert len(embedded.fashion_mnist_records("train", n=2)) == 2
    with pytest.raises(ValueError, match="split must be one of"):
        embedded.fashion_mnist_records("val")


def test_fashion_mnist_missing_raises_install_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "FASHION_MNIST_DIR", tmp_path / "none")
    with pytest.raises(AssetMissingError, match="apt-get install -y dataset-fashion-mnist"):
        embedded.fashion_mnist_records("test")


# ------------------------------------------------------------------------------ splits
def test_hash_split_is_deterministic_and_near_fraction():
    keys = [f"item/{i}" for i in range(10000)]
    splits = [embedded.hash_split(k) for k in keys]
    assert splits == [embedded.hash_split(k) for k in keys]
    assert 0.19 < splits.count("test") / len(keys) < 0.21
    reseeded = [embedded.hash_split(k, seed=1) for k in keys]
    assert reseeded != splits and 0.19 < reseeded.count("test") / len(keys) < 0.21
    assert all(embedded.hash_split(k, test_fraction=0.0) == "train" for k in keys[:100])


# ------------------------------------------------------------------------------ silhouettes
def _fake_animal_package(root, images, labels):
    data = root / "animal_mnist" / "data" / "Animal_MNIST"
    data.mkdir(parents=True)
    for name, array in (("animal_data_version_3.gz", images), ("animal_label_version_3.gz", labels)):
        with gzip.open(data / name, "wb") as handle:
            pickle.dump(array, handle)
    return root / "animal_mnist"


def test_animal_reader_on_tiny_pickles(tmp_path, monkeypatch):
    images = np.random.default_rng(0).integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    labels = np.arange(40, dtype=np.int64) % 10
    package = _fake_animal_package(tmp_path, images, labels)
    monkeypatch.setattr(assets, "package_dir", lambda module: package if module == "animal_mnist" else None)
    records = embedded.animal_silhouette_records()
    assert len(records) == 40
    by_id = {r.id: r for r in records}
    record = by_id["animal-silhouettes/00013"]
    assert record.label == "cow" and record.captions == ["a silhouette of a cow"]
    np.testing.assert_array_equal(np.asarray(record.image)[..., 1], images[13])
    test_ids = [r.id for r in embedded.animal_silhouette_records(split="test")]
    assert test_ids == [r.id for r in records if r.split == "test"] and test_ids
    assert len(embedded.animal_silhouette_records(split="train", n=5)) == 5


def test_numpy_only_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.gz"
    with gzip.open(path, "wb") as handle:
        pickle.dump(Evil(), handle)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        embedded.load_numpy_pickle(path)


# ------------------------------------------------------------------------------ Twemoji
def test_emoji_captions_keep_natural_words():
    entry = {"name": "RUNNER", "short_names": ["runner", "running"]}
    assert embedded.emoji_captions(entry) == ["runner", "running"]
    flag = {"name": "Andorra Flag", "short_names": ["flag-ad"]}
    assert embedded.emoji_captions(flag) == ["andorra flag"]
    face = {"name": "SMILING FACE WITH OPEN MOUTH", "short_names": ["smiley", "+1", "ok"]}
    assert embedded.emoji_captions(face) == ["smiling face with open mouth", "smiley"]


def test_twemoji_reader_on_tiny_package(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    folder = tmp_path / "assets" / "twemoji"
    (folder / "img" / "twitter" / "64").mkdir(parents=True)
    entries = [
        {"name": "GRINNING FACE", "unified": "1F600", "image": "1f600.png", "short_names": ["grinning"],
         "category": "Smileys & Emotion", "sort_order": 1, "has_img_twitter": True},
        {"name": "EMOJI COMPONENT RED HAIR", "unified": "1F9B0", "image": "1f9b0.png", "short_names": ["red_haired"],
         "category": "Component", "sort_order": 2, "has_img_twitter": True},
        {"name": "NO PICTURE", "unified": "1F999", "image": "1f999.png", "short_names": [],
         "category": "Objects", "sort_order": 3, "has_img_twitter": True},
    ]
    (folder / "emoji.json").write_text(json.dumps(entries))
    for name in ("1f600.png", "1f9b0.png"):
        Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(folder / "img" / "twitter" / "64" / name)
    records = embedded.twemoji_records()
    assert [(r.id, r.captions, r.label) for r in records] == [("twemoji/1f600", ["grinning face", "grinning"], "smileys & emotion")]
    assert records[0].split == embedded.hash_split("twemoji/1f600")
    assert np.asarray(open_image(records[0].image)).min() == 255  # fully transparent -> white


# ------------------------------------------------------------------------------ openclipart names
@pytest.mark.parametrize(
    "stem, caption",
    [
        ("2_dead_frogs_lumen_desig_01", "dead frogs"),
        ("armadillo_architetto_fra_01", "armadillo"),
        ("mouth_-_body_part_nicu_b_06", "mouth body part"),
        ("woman_police_02_gerald_g_01", "woman police"),
        ("stripper_jarno_vasamaa_01r", "stripper"),
        ("aircraft_jarno_vasamaa4", "aircraft"),
        ("bullet_hole_linda_kim_v", "bullet hole"),
        ("cocktail_daniel_steele_r", "cocktail"),
        ("apple_mateya_01", "apple"),
        ("green_arrow_mo_01", "green arrow"),
        ("orange_juice_box_bw", "orange juice box"),
        ("star_95pt06step", "star"),
        ("aiga_no_dogs1", "no dogs"),
        ("gnome-mime-application-pdf", "application pdf"),
        ("bordered_h_k", "king of hearts playing card"),
        ("simple_c_9", "9 of clubs playing card"),
        ("white_jk_r", "red joker playing card"),
        ("puerto_rico", "puerto rico"),
        ("architetto_francesco_ro_01", ""),
        ("mo_mount", "mo mount"),
    ],
)
def test_clean_clipart_name(stem, caption):
    assert embedded.clean_clipart_name(stem) == caption


def test_openclipart_reader_on_tiny_tree(tmp_path, monkeypatch):
    (tmp_path / "animals" / "birds").mkdir(parents=True)
    (tmp_path / "food").mkdir()
    Image.new("RGBA", (8, 8), (0, 0, 255, 128)).save(tmp_path / "animals" / "birds" / "acquila_architetto_franc_01.png")
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "animals" / "birds" / "architetto_francesco_ro_01.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "food" / "apple_mateya_01.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "stray.png")  # outside any category: skipped
    monkeypatch.setattr(assets, "OPENCLIPART_DIR", tmp_path)
    records = embedded.openclipart_records()
    assert [(r.id, r.captions, r.label) for r in records] == [
        ("openclipart/animals/birds/acquila_architetto_franc_01", ["acquila"], "animals"),
        ("openclipart/animals/birds/architetto_francesco_ro_01", ["birds"], "animals"),  # no words: folder name
        ("openclipart/food/apple_mateya_01", ["apple"], "food"),
    ]
    half_blue = np.asarray(open_image(records[0].image))[0, 0]
    assert abs(int(half_blue[0]) - 127) <= 1 and half_blue[2] == 255  # 50% blue over white


# ------------------------------------------------------------------------------ real data
@pytest.mark.assets
def test_real_fashion_mnist():
    folder = need("fashion-mnist")
    records = embedded.fashion_mnist_records("test", n=300)
    assert len(records) == 300 and records[0].label == "ankle boot"  # first official test image
    assert {r.label for r in records} == set(embedded.FASHION_MNIST_CLASSES)
    assert open_image(records[5].image).size == (28, 28) and open_image(records[5].image).mode == "RGB"
    test_labels = embedded.read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    train_labels = embedded.read_idx(folder / "train-labels-idx1-ubyte.gz")
    assert len(test_labels) == 10000 and len(train_labels) == 60000
    assert np.bincount(test_labels).tolist() == [1000] * 10


@pytest.mark.assets
def test_real_animal_silhouettes():
    need("animal-silhouettes")
    records = embedded.animal_silhouette_records()
    assert len(records) == 10000
    assert collections.Counter(r.label for r in records) == {name: 1000 for name in embedded.ANIMAL_SILHOUETTE_CLASSES}
    test = [r for r in records if r.split == "test"]
    assert 0.18 < len(test) / len(records) < 0.22
    assert [r.id for r in embedded.animal_silhouette_records(split="test", n=50)] == [r.id for r in test[:50]]
    pixels = np.asarray(open_image(records[0].image))
    assert pixels.shape == (28, 28, 3) and pixels.max() > 200 and pixels.min() < 50  # white shape on black


@pytest.mark.assets
def test_real_twemoji():
    need("twemoji")
    records = embedded.twemoji_records()
    assert 1800 < len(records) < 2100 and len({r.id for r in records}) == len(records)
    by_id = {r.id: r for r in records}
    assert by_id["twemoji/1f600"].captions[0] == "grinning face"
    assert by_id["twemoji/1f600"].label == "smileys & emotion"
    assert {r.label for r in records} == {
        "smileys & emotion", "people & body", "animals & nature", "food & drink", "travel & places",
        "activities", "objects", "symbols", "flags",
    }
    test = embedded.twemoji_records(split="test")
    assert 0.15 < len(test) / len(records) < 0.25 and all(r.split == "test" for r in test)
    assert [r.id for r in embedded.twemoji_records(split="test", seed=0)] == [r.id for r in test]
    for record in records[:200]:
        image = open_image(record.image)
        assert image.mode == "RGB" and image.size == (64, 64)
    assert open_image(by_id["twemoji/1f600"].image).getpixel((0, 0)) == (255, 255, 255)  # transparent corner


@pytest.mark.assets
def test_real_openclipart():
    root = need("openclipart")
    records = embedded.openclipart_records()
    assert len(records) > 8000 and len({r.id for r in records}) == len(records)
    assert {r.label for r in records} == {p.name.replace("_", " ") for p in root.iterdir() if p.is_dir()}
    assert all(r.captions and r.captions[0] for r in records)
    by_id = {r.id: r for r in records}
    assert by_id["openclipart/animals/2_dead_frogs_lumen_desig_01"].captions == ["dead frogs"]
    assert 0.18 < sum(r.split == "test" for r in records) / len(records) < 0.22
    checked = 0
    for record in records[:40]:  # RGBA pixels composited onto white, as a reference computes it
        with Image.open(record.image) as raw:
            if raw.mode != "RGBA":
                continue
            rgba = np.asarray(raw, dtype=np.float64)
        alpha = rgba[..., 3:] / 255
        expected = rgba[..., :3] * alpha + 255 * (1 - alpha)
        assert np.abs(np.asarray(open_image(record.image), dtype=np.float64) - expected).max() <= 1.0
        checked += 1
    assert checked > 20
