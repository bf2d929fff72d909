"""Webdataset shards: bad samples and broken shards, DataLoader workers, splitting shards across ranks.

Shards are written by hand with `tarfile` (img2dataset layout), so the reader is checked against
the format, not against our own writer (export -> read back is covered in test_formats.py).
"""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch

from helpers.formats_helpers import assert_same_records, encode, shapes_records, tar_member, write_wds_fixture
from vlbridge.data import formats
from vlbridge.data.records import SkipCounter
from vlbridge.errors import BadInputError


@pytest.fixture(scope="module")
def records():
    return shapes_records(8, split="val")


def write_raw_shard(path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                tar_member(tar, f"{key}.{ext}", data)


def good_members(record) -> dict[str, bytes]:
    meta = {"captions": record.captions, "label": record.label, "split": record.split, "domain": record.domain}
    return {"png": encode(record.image), "txt": record.captions[0].encode(), "json": json.dumps(meta).encode()}


def test_bad_samples_are_skipped_and_counted(tmp_path, records):
    png = encode(records[0].image)
    bad = [
        ("no-image", {"txt": b"a caption"}),
        ("no-text", {"png": png}),
        ("empty-txt", {"png": png, "txt": b"   "}),
        ("latin1-txt", {"png": png, "txt": b"caf\xe9"}),
        ("bad-json", {"png": png, "json": b'{"captions": ["x"'}),
        ("wrong-json", {"png": png, "json": b'{"captions": 5}'}),
        ("json-list", {"png": png, "json": b'["x"]'}),
        ("bad-label", {"png": png, "json": b'{"caption": "x", "label": [1]}'}),
        ("corrupt-png", {"png": b"\x89PNG\r\n\x1a\nnope", "txt": b"a caption"}),
        ("cut-png", {"png": png[: len(png) // 2], "txt": b"a caption"}),
    ]
    samples = [(r.id, good_members(r)) for r in records[:4]] + bad + [(r.id, good_members(r)) for r in records[4:]]
    write_raw_shard(tmp_path / "000000.tar", samples)
    skips = SkipCounter()
    got = [record for record, _ in formats.iter_decoded(formats.load_image_text(f"wds:{tmp_path}", skips), skips)]
    assert skips.as_dict() == {"missing image file": 1, "missing caption file": 1, "empty caption": 1,
                               "non-UTF-8 text": 1, "malformed JSON": 1, "wrong schema": 3, "undecodable image": 2}
    assert_same_records(got, records)


@pytest.mark.parametrize("cut_member", [1, 5, 9, 11])
def test_truncated_shard_keeps_complete_samples_and_goes_on(tmp_path, records, cut_member):
    """Shard 0 holds 4 samples x (png, txt, json); it is cut in the middle of member `cut_member`."""
    shards = write_wds_fixture(records, tmp_path / "s", per_shard=4)
    with tarfile.open(shards[0]) as tar:
        member = tar.getmembers()[cut_member]
    shards[0].write_bytes(shards[0].read_bytes()[: member.offset_data + member.size // 2])
    skips = SkipCounter()
    got = list(formats.load_image_text(f"wds:{tmp_path / 's'}", skips))
    assert skips.as_dict() == {"unreadable shard data": 1}
    complete = cut_member // 3  # samples whose members all precede the cut
    assert_same_records(got, records[:complete] + records[4:])  # never a sample with members missing


def test_missing_shards_raise_one_error_naming_them(tmp_path, records):
    write_wds_fixture(records, tmp_path / "s", per_shard=4)
    with pytest.raises(BadInputError, match=r"1 of 3 shards missing: .*00002\.tar"):
        formats.load_image_text("wds:" + str(tmp_path / "s" / "{00000..00002}.tar"))
    with pytest.raises(BadInputError, match="expected \\*.tar shards, found none"):
        (tmp_path / "empty").mkdir()
        formats.load_image_text(f"wds:{tmp_path / 'empty'}")


def test_dataloader_workers_read_every_sample_once(tmp_path, records):
    write_wds_fixture(records, tmp_path / "s", per_shard=2)  # 4 shards for 2 workers
    stream = formats.load_image_text(f"wds:{tmp_path / 's'}")
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2, collate_fn=lambda record: record)
    got = sorted(list(loader), key=lambda record: record.id)
    assert_same_records(got, sorted(records, key=lambda record: record.id))


def test_shards_split_across_ranks_only_when_asked(tmp_path, records, monkeypatch):
    write_wds_fixture(records, tmp_path / "s", per_shard=2)  # shards 0..3
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    mine = [r.id for r in formats.load_image_text(f"wds:{tmp_path / 's'}?by_rank=1")]
    assert mine == [r.id for r in records[2:4] + records[6:8]]  # shards 1 and 3
    assert [r.id for r in formats.load_image_text(f"wds:{tmp_path / 's'}")] == [r.id for r in records]


def test_json_single_caption_and_key_as_id(tmp_path, records):
    samples = [(f"{i:09d}", {"jpg": encode(r.image, "JPEG"), "json": json.dumps({"caption": r.captions[1], "url": "x"}).encode()})
               for i, r in enumerate(records[:3])]
    write_raw_shard(tmp_path / "000000.tar", samples)
    got = list(formats.load_image_text(f"wds:{tmp_path / '000000.tar'}"))
    assert [(r.id, r.captions) for r in got] == [(f"{i:09d}", [r.captions[1]]) for i, r in enumerate(records[:3])]
    assert all(r.image == dict(members)["jpg"] for r, (_, members) in zip(got, samples))


def test_written_shards_hold_the_documented_keys(tmp_path, records):
    summary = formats.export_records(records[:2], tmp_path / "out", "wds", progress=False)
    with tarfile.open(tmp_path / "out" / "000000.tar") as tar:
        names = tar.getnames()
        meta = json.load(io.BytesIO(tar.extractfile(f"{records[0].id}.json").read()))
        first_caption = tar.extractfile(f"{records[0].id}.txt").read().decode()
    assert sorted(names) == sorted(f"{r.id}.{ext}" for r in records[:2] for ext in ("png", "txt", "json"))
    assert [name.split(".")[0] for name in names] == [records[0].id] * 3 + [records[1].id] * 3
    assert meta == {"id": records[0].id, "captions": records[0].captions, "label": records[0].label,
                    "split": records[0].split, "domain": records[0].domain}
    assert first_caption == records[0].captions[0]
    assert summary.read_back == f"wds:{tmp_path / 'out' / '000000.tar'}"
