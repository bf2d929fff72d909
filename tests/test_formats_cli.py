"""`vlbridge data export` and `vlbridge data filter` end to end through `vlbridge.cli.main`."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from helpers.formats_helpers import assert_same_records, encode
from vlbridge.cli import main
from vlbridge.data import formats
from vlbridge.data.query_filter import filter_by_query_words
from vlbridge.data.shapes import write_dataset


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "ds"
    write_dataset(root, 14, seed=5, image_size=32, progress=False)
    return root


def source_spec(shapes_dir) -> str:
    return f"jsonl:{shapes_dir / 'captions.jsonl'}"


@pytest.mark.parametrize("format", ["wds", "csv"])
def test_export_round_trips_through_the_cli(tmp_path, shapes_dir, capsys, format):
    out = tmp_path / "out"
    assert main(["data", "export", "--from", source_spec(shapes_dir), "--format", format, "--out", str(out),
                 "--shard-size", "5"]) == 0
    printed = capsys.readouterr().out
    read_back = printed.split("read back with ")[1].split()[0].rstrip(";")
    assert "exported 14 records" in printed and "export: no samples skipped" in printed
    if format == "wds":
        assert read_back == "wds:" + str(out / "{000000..000002}.tar")
    assert_same_records(list(formats.load_image_text(read_back)), formats.load_image_text(source_spec(shapes_dir)))


def test_export_with_bad_samples_finishes_and_reports_them(tmp_path, shapes_dir, capsys):
    source = tmp_path / "mixed.jsonl"
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n junk")
    (tmp_path / "cut.png").write_bytes(encode(Image.new("RGB", (8, 8)))[:30])
    good = (shapes_dir / "captions.jsonl").read_text().replace('"image": "images/', f'"image": "{shapes_dir}/images/')
    bad = ['{"id": "b1", "image": "broken.png", "caption": "x"}', '{"id": "b2", "image": "cut.png", "caption": "x"}',
           '{"id": "b3", "image": "gone.png", "caption": "x"}', "{not json", '{"id": "b4", "image": "cut.png", "caption": ""}']
    source.write_text("\n".join(bad) + "\n" + good)
    assert main(["data", "export", "--from", f"jsonl:{source}", "--format", "jsonl", "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert "exported 14 records" in printed
    assert "export: skipped 5 samples (2 undecodable image, 1 missing image file, 1 malformed JSON, 1 empty caption)" in printed


@pytest.mark.parametrize("argv_tail, message", [
    (["--from", "parquet:x", "--format", "wds"], "unknown dataset spec 'parquet:x'"),
    (["--from", "coco:/nowhere/ann.json", "--format", "wds"], "COCO annotations file /nowhere/ann.json: no such file"),
    (["--from", "shapes?n=2", "--format", "wds", "--shard-size", "0"], "--shard-size must be a whole number from 1"),  # the shared size check (vlbridge.validate)
])
def test_export_user_errors_are_one_line(tmp_path, capsys, argv_tail, message):
    assert main(["data", "export", "--out", str(tmp_path / "o")] + argv_tail) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlbridge: error: ") and message in err and err.count("\n") == 1


def test_export_refuses_a_non_empty_output(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    assert main(["data", "export", "--from", "shapes?n=2", "--format", "jsonl", "--out", str(tmp_path / "o")]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("stream", [False, True])
def test_filter_end_to_end(tmp_path, shapes_dir, capsys, stream):
    spec = source_spec(shapes_dir)
    if stream:  # the same records as webdataset shards: the command counts in one pass, selects in a second
        assert main(["data", "export", "--from", spec, "--format", "wds", "--out", str(tmp_path / "shards"), "--shard-size", "4"]) == 0
        spec = f"wds:{tmp_path / 'shards'}"
    capsys.readouterr()
    out = tmp_path / "filtered"
    assert main(["data", "filter", "--from", spec, "--top-m", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    expected = filter_by_query_words(formats.load_image_text(source_spec(shapes_dir)), 4)
    total_pairs = expected.kept_pairs + expected.dropped_pairs
    assert f"kept {len(expected.kept)} of 14 records ({expected.kept_pairs} pairs kept, {expected.dropped_pairs} dropped)" in printed
    assert "query words: " + ", ".join(f"{w} ({expected.word_counts[w]})" for w in expected.query_words) in printed
    summary = json.loads((out / "query_words.json").read_text())
    assert [entry["word"] for entry in summary["query_words"]] == expected.query_words
    assert summary["kept"] + summary["dropped"] == 14 and summary["kept_pairs"] + summary["dropped_pairs"] == total_pairs
    assert_same_records(formats.load_image_text(f"jsonl:{out / 'captions.jsonl'}"), expected.kept)


def test_filter_writes_the_chosen_format(tmp_path, capsys):
    out = tmp_path / "f"
    assert main(["data", "filter", "--from", "shapes?n=6&image_size=32", "--top-m", "2", "--out", str(out), "--format", "folder"]) == 0
    expected = filter_by_query_words(formats.load_image_text("shapes?n=6&image_size=32"), 2)
    got = formats.load_image_text(f"folder:{out}")
    assert sorted((r.id, r.captions) for r in got) == sorted((r.id, r.captions) for r in expected.kept)
    assert main(["data", "filter", "--from", "shapes?n=2", "--top-m", "0", "--out", str(tmp_path / "g")]) == 2
    assert "top_m must be a positive number" in capsys.readouterr().err


def test_help_lists_both_commands(capsys):
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    text = capsys.readouterr().out
    assert "export" in text and "filter" in text
