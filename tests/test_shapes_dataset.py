"""Tests of the on-disk shapes world: `write_dataset` files and the `vlbridge data shapes` command.

The files must be byte-identical for the same arguments and must hold exactly what the
in-memory API (`image_text_records`, `vqa_records`) returns for the same seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlbridge.cli import main
from vlbridge.commands.data_shapes import parse_split_fractions
from vlbridge.data.records import open_image
from vlbridge.data.shapes import (
    HELD_OUT_COMBOS,
    SPLITS,
    image_text_records,
    split_counts,
    vqa_records,
    write_dataset,
)
from vlbridge.errors import UserError

CAPTION_KEYS = ["id", "image", "captions", "label", "split", "domain"]
VQA_KEYS = ["question_id", "image_id", "image", "question", "answers", "answer_type", "split"]


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `root`."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_same_seed_gives_byte_identical_files(tmp_path):
    first = write_dataset(tmp_path / "a", 30, seed=3, progress=False)
    second = write_dataset(tmp_path / "b", 30, seed=3, progress=False)
    digest_a, digest_b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert digest_a == digest_b
    assert len([name for name in digest_a if name.startswith("images/")]) == 30
    assert {"captions.jsonl", "vqa.jsonl", "shapes.json"} <= set(digest_a)
    assert {k: v for k, v in first.items() if k != "out_dir"} == {k: v for k, v in second.items() if k != "out_dir"}


def test_files_are_identical_in_a_fresh_process_with_another_hash_seed(tmp_path):
    write_dataset(tmp_path / "here", 12, seed=6, progress=False)
    script = "import sys; from vlbridge.data.shapes import write_dataset; write_dataset(sys.argv[1], 12, seed=6)"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "there")], env=env, check=True)
    assert tree_digest(tmp_path / "here") == tree_digest(tmp_path / "there")


def test_different_seeds_give_different_files(tmp_path):
    write_dataset(tmp_path / "a", 20, seed=1, progress=False)
    write_dataset(tmp_path / "b", 20, seed=2, progress=False)
    digest_a, digest_b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert digest_a["captions.jsonl"] != digest_b["captions.jsonl"]
    assert digest_a["vqa.jsonl"] != digest_b["vqa.jsonl"]
    images = [name for name in digest_a if name.startswith("images/")]
    assert sum(digest_a[name] != digest_b[name] for name in images) >= 18


def test_files_hold_what_the_in_memory_api_returns(tmp_path):
    summary = write_dataset(tmp_path, 20, seed=4, image_size=40, splits=(0.5, 0.25, 0.25), progress=False)
    assert summary["splits"] == {"train": 10, "val": 5, "test": 5}
    rows = read_jsonl(tmp_path / "captions.jsonl")
    questions = read_jsonl(tmp_path / "vqa.jsonl")
    assert all(list(row) == CAPTION_KEYS for row in rows) and all(list(q) == VQA_KEYS for q in questions)
    for split, count in summary["splits"].items():
        records = image_text_records(count, split, seed=4, image_size=40)
        split_rows = [row for row in rows if row["split"] == split]
        assert [(r["id"], r["captions"], r["label"], r["domain"]) for r in split_rows] == [
            (r.id, r.captions, r.label, r.domain) for r in records
        ]
        for row, record in zip(split_rows, records):
            on_disk = np.asarray(open_image(tmp_path / row["image"]))
            assert on_disk.shape == (40, 40, 3) and np.array_equal(on_disk, np.asarray(record.image))
        expected = [
            (q.question_id, q.image_id, q.question, q.answers, q.answer_type)
            for q in vqa_records(count, split, seed=4, image_size=40)
        ]
        written = [(q["question_id"], q["image_id"], q["question"], q["answers"], q["answer_type"])
                   for q in questions if q["split"] == split]  # fmt: skip
        assert written == expected
    assert summary["images"] == len(rows) == 20
    assert summary["captions"] == sum(len(row["captions"]) for row in rows)
    assert summary["questions"] == len(questions)
    assert summary["single_object"] == sum(row["label"] is not None for row in rows)
    assert summary["domains"]["in"] == sum(row["domain"] == "in" for row in rows)
    assert all(row["domain"] == "in" for row in rows if row["split"] == "train")
    assert all(len(q["answers"]) == 10 for q in questions)


def test_dataset_card_records_how_it_was_made(tmp_path):
    write_dataset(tmp_path, 10, seed=9, image_size=32, max_objects=2, progress=False)
    card = json.loads((tmp_path / "shapes.json").read_text())
    assert card["config"]["seed"] == 9 and card["config"]["image_size"] == 32 and card["config"]["max_objects"] == 2
    assert [tuple(combo) for combo in card["held_out_combos"]] == list(HELD_OUT_COMBOS)
    assert sum(card["splits"].values()) == 10


def test_refuses_to_overwrite_unless_asked_and_leaves_no_stale_images(tmp_path):
    write_dataset(tmp_path, 20, seed=0, progress=False)
    with pytest.raises(UserError, match="already holds a dataset"):
        write_dataset(tmp_path, 10, seed=0, progress=False)
    write_dataset(tmp_path, 10, seed=0, overwrite=True, progress=False)
    assert len(list((tmp_path / "images").glob("*.png"))) == 10
    write_dataset(tmp_path.parent / "fresh", 10, seed=0, progress=False)
    assert tree_digest(tmp_path) == tree_digest(tmp_path.parent / "fresh")


def test_split_counts_use_largest_remainders():
    assert split_counts(10, {"train": 0.85, "val": 0.1, "test": 0.05}) == {"train": 9, "val": 1, "test": 0}
    assert split_counts(3, {"train": 1 / 3, "val": 1 / 3, "test": 1 / 3}) == {"train": 1, "val": 1, "test": 1}
    assert split_counts(7, {"train": 1.0}) == {"train": 7}


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 10_000), weights=st.lists(st.integers(0, 100), min_size=3, max_size=3).filter(any))
def test_split_counts_always_sum_to_n_and_stay_close(n, weights):
    fractions = dict(zip(SPLITS, (w / sum(weights) for w in weights)))
    counts = split_counts(n, fractions)
    assert sum(counts.values()) == n
    assert all(abs(counts[name] - n * fractions[name]) < 1 for name in SPLITS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 0},
        {"n": -2},
        {"n": 5, "seed": -1},
        {"n": 5, "image_size": 4},
        {"n": 5, "splits": (0.5, 0.6, 0.1)},
        {"n": 5, "splits": (0.5, 0.5)},
        {"n": 5, "splits": {"train": 0.5, "dev": 0.5}},
        {"n": 5, "splits": (1.2, -0.1, -0.1)},
        {"n": 5, "max_objects": 0},
    ],
)
def test_bad_write_arguments_raise_user_error(tmp_path, kwargs):
    with pytest.raises(UserError):
        write_dataset(tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out" / "captions.jsonl").exists()


def test_parse_split_fractions():
    assert parse_split_fractions("0.8,0.1,0.1") == {"train": 0.8, "val": 0.1, "test": 0.1}
    assert parse_split_fractions("train=0.9, test=0.1") == {"train": 0.9, "test": 0.1}
    for bad in ("0.5,0.5", "a,b,c", "", "train=x"):
        with pytest.raises(UserError, match="--split-fractions"):
            parse_split_fractions(bad)


def test_cli_end_to_end_matches_the_library(tmp_path, capsys):
    argv = ["data", "shapes", "--out", str(tmp_path / "cli"), "--n", "24", "--seed", "5", "--image-size", "32",
            "--split-fractions", "train=0.5,val=0.25,test=0.25"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("wrote 24 images to ")
    assert "train 12 / val 6 / test 6" in printed[0]
    write_dataset(tmp_path / "lib", 24, seed=5, image_size=32, splits={"train": 0.5, "val": 0.25, "test": 0.25},
                  progress=False)  # fmt: skip
    assert tree_digest(tmp_path / "cli") == tree_digest(tmp_path / "lib")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--n", "-5"], "n must be"),
        (["--n", "0"], "--n must be a whole number from 1"),
        (["--image-size", "8"], "image size"),
        (["--seed", "-1"], "seed"),
        (["--split-fractions", "0.5,0.6,0.1"], "sum to 1"),
        (["--split-fractions", "a,b,c"], "--split-fractions"),
        (["--max-objects", "9"], "max_objects"),
    ],
)
def test_cli_bad_arguments_give_one_error_line(tmp_path, capsys, extra, message):
    assert main(["data", "shapes", "--out", str(tmp_path / "out"), "--n", "5", *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("vlbridge: error: ") and message in error and "\n" not in error


def test_cli_refuses_an_existing_dataset(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["data", "shapes", "--out", out, "--n", "3"]) == 0
    assert main(["data", "shapes", "--out", out, "--n", "3"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "shapes", "--out", out, "--n", "3", "--overwrite"]) == 0


def test_cli_help_describes_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "shapes", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--n", "--seed", "--image-size", "--split-fractions", "--max-objects", "--overwrite"):
        assert option in text
    assert "captions.jsonl" in text and "held-out" in text
