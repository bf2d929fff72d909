"""Fuzz every user-facing command with hostile input (issue #15, item 3), in-process.

Each test feeds one class of bad input to the commands that read it and asserts one of:
- a clear error: exit code != 0, no traceback, one `error:` line naming the argument or file;
- skip-and-count inside a dataset: the good samples are written, the bad one is counted, and the
  counts printed match what is on disk.
Never a traceback, never a hang (a SIGALRM deadline), never a silent change of meaning.
Hypothesis draws the sizes, depths and values where a range of them should all fail alike;
`max_examples` stays small so the module runs in well under two minutes on two busy cores.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.eval_helpers import save_tiny_run
from helpers.fuzz_helpers import assert_clear_error, deep_json, fifo, long_int_json, no_temporaries, run_cli
from helpers.serve_helpers import make_models, write_images
from vlbridge.data import formats
from vlbridge.data.records import SkipCounter
from vlbridge.validate import MAX_COUNT

FUZZ = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error for a GPU that is absent")


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 12-image shapes world on disk (captions.jsonl, vqa.jsonl, images/) written by `data shapes`."""
    from vlbridge.cli import main

    root = tmp_path_factory.mktemp("fuzz-world") / "world"
    assert main(["data", "shapes", "--out", str(root), "--n", "12", "--image-size", "32"]) == 0
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny CLIP run, tiny GPT-2 and a LiMBeR checkpoint over them (helpers.serve_helpers)."""
    return make_models(tmp_path_factory.mktemp("fuzz-models"))


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    return save_tiny_run(tmp_path_factory.mktemp("fuzz-clip") / "clip")


@pytest.fixture
def image(world):
    return sorted((world / "images").glob("*.png"))[0]


def jsonl_line(record_id: str, image, captions) -> str:
    return json.dumps({"id": record_id, "image": str(image), "captions": captions}) + "\n"


def exported(capsys, source: str, out, fmt: str = "jsonl"):
    return run_cli(capsys, ["data", "export", "--from", source, "--out", out, "--format", fmt])


# ------------------------------------------------------------------------------- JSON
@FUZZ
@given(depth=st.integers(2_000, 120_000), opener=st.sampled_from("[{"))
def test_json_nested_deeper_than_the_recursion_limit(capsys, tmp_path_factory, depth, opener):
    folder = tmp_path_factory.mktemp("deep")
    bad = deep_json(folder / "deep.json", depth, opener)
    commands = [
        ["score", "captions", "--coco-annotations", bad, "--coco-results", bad],
        ["score", "vqa", "--annotations", bad, "--results", bad],
        ["data", "export", "--from", f"coco:{bad}?images={folder}", "--out", folder / "o", "--format", "jsonl"],
    ]
    for argv in commands:
        assert "not valid JSON" in assert_clear_error(run_cli(capsys, argv), str(bad))


@FUZZ
@given(digits=st.integers(4_301, 30_000))
def test_integers_of_thousands_of_digits(capsys, tmp_path_factory, digits):
    folder = tmp_path_factory.mktemp("bigint")
    bad = long_int_json(folder / "big.json", digits)
    for argv in (["score", "captions", "--coco-annotations", bad, "--coco-results", bad],
                 ["data", "export", "--from", f"coco:{bad}?images={folder}", "--out", folder / "o", "--format", "csv"]):
        assert "too many digits" in assert_clear_error(run_cli(capsys, argv), str(bad))


def test_bad_json_lines_are_skipped_and_counted(capsys, tmp_path, image):
    source = tmp_path / "data.jsonl"
    source.write_text(jsonl_line("good", image, ["a red circle"]) + "[" * 50_000 + "\n"
                      + '{"id": ' + "9" * 6000 + "}\n", encoding="utf-8")
    result = exported(capsys, f"jsonl:{source}", tmp_path / "out")
    assert result.code == 0 and "exported 1 records" in result.out
    assert "skipped 2 samples (2 malformed JSON)" in result.out


# ------------------------------------------------------------------------------- text
@pytest.mark.parametrize("fmt", formats.EXPORT_FORMATS)
def test_lone_surrogates_are_skipped_and_counted(capsys, tmp_path, image, fmt):
    source = tmp_path / "data.jsonl"
    source.write_text(jsonl_line("good", image, ["a red circle"]) + jsonl_line("bad", image, ["broken \ud800 text"])
                      + jsonl_line("bad-id-\udfff", image, ["fine"]), encoding="utf-8")
    result = exported(capsys, f"jsonl:{source}", tmp_path / "out", fmt)
    assert result.code == 0 and "exported 1 records" in result.out and "2 non-UTF-8 text" in result.out
    back = list(formats.load_image_text(result.out.split("read back with ")[1].split()[0], SkipCounter()))
    assert [record.captions for record in back] == [["a red circle"]]
    assert no_temporaries(tmp_path) == []


def test_an_export_that_fails_half_way_leaves_nothing(capsys, tmp_path, image, monkeypatch):
    from vlbridge.data import formats_common
    from vlbridge.errors import UserError

    source = tmp_path / "data.jsonl"
    source.write_text("".join(jsonl_line(f"r{i}", image, [f"caption {i}"]) for i in range(4)), encoding="utf-8")
    real, calls = formats_common.encoded_image, []

    def fail_third(ref):
        calls.append(ref)
        if len(calls) == 3:
            raise UserError("disk gone")
        return real(ref)

    monkeypatch.setattr("vlbridge.data.formats.encoded_image", fail_third)
    out = tmp_path / "out"
    assert_clear_error(exported(capsys, f"jsonl:{source}", out), "disk gone")
    assert out.is_dir() and list(out.iterdir()) == [] and no_temporaries(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "out"]


def test_latin1_support_file(capsys, tmp_path, models, image):
    support = tmp_path / "support.jsonl"
    line = {"question_id": "q1", "image_id": "a", "image": str(image), "question": "caf\xe9?", "answers": ["oui"]}
    support.write_bytes(json.dumps(line, ensure_ascii=False).encode("latin-1") + b"\n")
    argv = ["vqa", image, "--question", "what?", "--shots", "1", "--support", support, "--model", models.limber,
            "--device", "cpu"]
    assert "no usable VQA lines" in assert_clear_error(run_cli(capsys, argv), str(support))


# ------------------------------------------------------------------------------- CSV
def test_csv_field_over_the_csv_modules_limit(capsys, tmp_path, image):
    import csv

    source = tmp_path / "data.csv"
    huge = "a" * (csv.field_size_limit() + 10)
    source.write_text(f"image,caption\n{image},{huge}\n{image},a red circle\n", encoding="utf-8")
    result = exported(capsys, f"csv:{source}", tmp_path / "out")
    assert result.code == 0 and "exported 1 records" in result.out and "1 wrong schema" in result.out


def test_duplicate_csv_header_column(capsys, tmp_path, image):
    source = tmp_path / "data.csv"
    source.write_text(f"image,caption,caption\n{image},one,two\n", encoding="utf-8")
    line = assert_clear_error(exported(capsys, f"csv:{source}", tmp_path / "out"), str(source))
    assert "'caption' twice" in line


def test_csv_duplicate_id_with_different_images(capsys, tmp_path, world):
    first, second = sorted((world / "images").glob("*.png"))[:2]
    source = tmp_path / "data.csv"
    source.write_text(f"id,image,caption\nx,{first},one\nx,{second},two\nx,{first},three\n", encoding="utf-8")
    records = formats.load_image_text(f"csv:{source}", skips := SkipCounter())
    assert [(r.id, r.image.name, r.captions) for r in records] == [("x", first.name, ["one", "three"])]
    assert skips.total == 1


# ------------------------------------------------------------------------------- specs
@pytest.mark.parametrize("pattern", ["shard-{000..001.tar", "shard-000..001}.tar", "{{a,b}.tar"])
def test_unbalanced_brace_in_a_shard_pattern(capsys, tmp_path, pattern):
    argv = ["data", "export", "--from", f"wds:{tmp_path / pattern}", "--out", tmp_path / "out", "--format", "jsonl"]
    assert "brace pattern" in assert_clear_error(run_cli(capsys, argv), "webdataset pattern")


@pytest.mark.parametrize("spec", ["twemoji?split=val", "fashion-mnist?split=bogus", "openclipart?split=TEST",
                                  "animal-silhouettes?split=", "shapes?split=dev"])
def test_split_values_that_are_not_splits(capsys, tmp_path, spec):
    result = exported(capsys, spec, tmp_path / "out")
    assert_clear_error(result, "split")


@pytest.mark.parametrize("name", ["twemoji", "openclipart", "animal-silhouettes", "fashion-mnist", "shapes", "objects"])
@FUZZ
@given(n=st.integers(-10**6, 0))
def test_zero_or_negative_n_in_named_datasets_is_one_error(capsys, tmp_path_factory, name, n):
    result = exported(capsys, f"{name}?n={n}", tmp_path_factory.mktemp("n") / "out")
    assert "whole number >= 1" in assert_clear_error(result, "n=")


@FUZZ
@given(n=st.integers(MAX_COUNT + 1, 10**40))
def test_n_has_an_upper_bound(capsys, tmp_path_factory, n):
    out = tmp_path_factory.mktemp("big-n")
    assert_clear_error(run_cli(capsys, ["data", "shapes", "--out", out / "w", "--n", n], timeout=10), "--n")
    assert_clear_error(exported(capsys, f"shapes?n={n}", out / "e"), "n=")


def test_shapes_n_spec_reads_the_split_it_is_asked_for():
    """What `eval retrieval --dataset "shapes?n=5"` scores: the test split its JSON names."""
    from vlbridge.data import datasets

    data = datasets.load_dataset("shapes?n=5", "image_text", split="test", seed=0)
    assert data.split == "test" and len(data.records) == 5
    assert all(record.split == "test" for record in data.records)


# ------------------------------------------------------------------------------- output paths
def output_commands(world, clip_run, models):
    """(argv, flag, kind) for every command that writes an --out file / folder or a --cache folder."""
    spec = f"jsonl:{world / 'captions.jsonl'}"
    anns = world / "captions.jsonl"
    eval_cmd = lambda sub: ["eval", sub, "--model", clip_run, "--dataset", "shapes?n=4"]  # noqa: E731
    return [
        (eval_cmd("zeroshot"), "--out", "file"), (eval_cmd("probe"), "--out", "file"),
        (eval_cmd("retrieval"), "--out", "file"), (eval_cmd("robustness"), "--out", "file"),
        (eval_cmd("zeroshot"), "--cache", "dir"), (eval_cmd("retrieval"), "--cache", "dir"),
        (["score", "captions", "--coco-annotations", anns, "--coco-results", anns], "--out", "file"),
        (["score", "vqa", "--annotations", anns, "--results", anns], "--out", "file"),
        (["score", "clip", "--images", world / "images", "--captions", anns, "--model", clip_run], "--out", "file"),
        (["data", "export", "--from", spec, "--format", "jsonl"], "--out", "dir"),
        (["data", "filter", "--from", spec, "--format", "jsonl", "--top-m", "3"], "--out", "dir"),
        (["data", "shapes", "--n", "3"], "--out", "dir"),
        (["extract", "--encoder", f"clip:{clip_run}", "--dataset", "shapes", "--n", "3"], "--cache", "dir"),
        (["index", "build", "--clip", clip_run, "--from", f"folder:{world}"], "--out", "dir"),
        (["train", "clip"], "--out", "dir"), (["train", "ssl"], "--out", "dir"),
        (["train", "limber", "--encoder", f"clip:{clip_run}", "--lm", models.lm], "--out", "dir"),
    ]


def test_out_and_cache_naming_a_directory_a_file_or_a_path_under_a_file(capsys, tmp_path, world, clip_run, models):
    a_dir, a_file = tmp_path / "a-dir", tmp_path / "a-file"
    a_dir.mkdir()
    (a_dir / "keep").write_text("x")
    a_file.write_text("precious")
    for argv, flag, kind in output_commands(world, clip_run, models):
        wrong_kind = a_dir if kind == "file" else a_file
        for target in (wrong_kind, a_file / "under" / "x.json"):
            line = assert_clear_error(run_cli(capsys, [*argv, flag, target]), flag)
            assert str(target) in line, line
    assert a_file.read_text() == "precious" and sorted(p.name for p in a_dir.iterdir()) == ["keep"]
    assert no_temporaries(tmp_path) == []


# ------------------------------------------------------------------------------- sizes and rates
def size_commands(world, clip_run, models, tmp_path):
    image = sorted((world / "images").glob("*.png"))[0]
    spec = f"jsonl:{world / 'captions.jsonl'}"
    return [
        (["eval", "zeroshot", "--model", clip_run, "--dataset", "shapes?n=4"], "--batch-size"),
        (["eval", "probe", "--model", clip_run, "--dataset", "shapes?n=4"], "--c-steps"),
        (["extract", "--encoder", f"clip:{clip_run}", "--dataset", "shapes", "--n", "3", "--cache", tmp_path], "--batch-size"),
        (["extract", "--encoder", f"clip:{clip_run}", "--dataset", "shapes", "--cache", tmp_path], "--chunk-size"),
        (["extract", "--encoder", f"clip:{clip_run}", "--dataset", "shapes", "--cache", tmp_path], "--n"),
        (["score", "clip", "--images", image, "--captions", tmp_path / "c.json", "--model", clip_run], "--batch-size"),
        (["caption", image, "--model", models.limber, "--device", "cpu"], "--batch-size"),
        (["caption", image, "--model", models.limber, "--device", "cpu"], "--max-new-tokens"),
        (["caption", image, "--model", models.limber, "--device", "cpu", "--strategy", "beam"], "--beams"),
        (["data", "export", "--from", spec, "--out", tmp_path / "o", "--format", "wds"], "--shard-size"),
        (["index", "build", "--clip", clip_run, "--from", f"folder:{world}", "--out", tmp_path / "i"], "--part-size"),
        (["train", "ssl", "--out", tmp_path / "s"], "--batch-size"),
        (["train", "ssl", "--out", tmp_path / "s"], "--steps"),
        (["train", "limber", "--encoder", f"clip:{clip_run}", "--lm", models.lm, "--out", tmp_path / "l"], "--steps"),
    ]


@FUZZ
@given(value=st.integers(-10**30, 0))
def test_zero_or_negative_sizes_on_the_command_line(capsys, tmp_path_factory, world, clip_run, models, value):
    tmp_path = tmp_path_factory.mktemp("sizes")
    for argv, flag in size_commands(world, clip_run, models, tmp_path):
        line = assert_clear_error(run_cli(capsys, [*argv, flag, str(value)]), flag)
        assert "whole number" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


BAD_NUMBERS = st.one_of(st.floats(max_value=0.0, allow_nan=False), st.sampled_from([math.nan, math.inf, -math.inf]))


@FUZZ
@given(value=BAD_NUMBERS)
def test_negative_or_nan_rates_on_the_command_line(capsys, clip_run, world, value):
    base = ["eval", "probe", "--model", clip_run, "--dataset", "shapes?n=4"]
    for flag in ("--c-min", "--c-max"):
        assert "finite number > 0" in assert_clear_error(run_cli(capsys, [*base, f"{flag}={value!r}"]), flag)
    image = sorted((world / "images").glob("*.png"))[0]
    caption = ["caption", image, "--model", "nowhere", "--strategy", "sample", f"--temperature={value!r}"]
    assert_clear_error(run_cli(capsys, caption), "--temperature")


def train_commands(clip_run, models, out):
    return {
        "clip": ["train", "clip", "--out", out / "clip"],
        "ssl": ["train", "ssl", "--out", out / "ssl"],
        "limber": ["train", "limber", "--encoder", f"clip:{clip_run}", "--lm", models.lm, "--out", out / "limber"],
    }


@FUZZ
@given(lr=BAD_NUMBERS, key=st.sampled_from(["optim.lr", "optim.eps", "optim.beta1"]))
def test_negative_or_nan_learning_rates_in_configs(capsys, tmp_path_factory, clip_run, models, lr, key):
    folder = tmp_path_factory.mktemp("lr")
    section, name = key.split(".")
    config = folder / "config.json"
    config.write_text(json.dumps({section: {name: lr if math.isfinite(lr) else str(lr)}}).replace('"nan"', "NaN")
                      .replace('"inf"', "Infinity").replace('"-inf"', "-Infinity"))
    for argv in train_commands(clip_run, models, folder).values():
        if key == "optim.beta1" and lr == 0:
            continue  # beta1 = 0 is a valid AdamW setting
        assert_clear_error(run_cli(capsys, [*argv, "--config", config], timeout=45), key)


@pytest.mark.parametrize("setting, key", [({"batch_size": 0}, "batch_size"), ({"data": {"workers": -1}}, "data.workers")])
def test_zero_or_negative_sizes_in_configs(capsys, tmp_path, clip_run, models, setting, key):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(setting))
    commands = train_commands(clip_run, models, tmp_path)
    targets = commands.values() if key == "batch_size" else [commands["clip"]]
    for argv in targets:
        assert_clear_error(run_cli(capsys, [*argv, "--config", config], timeout=45), key)


def test_c_max_nan_and_train_limber_steps_zero(capsys, clip_run, models, tmp_path):
    probe = ["eval", "probe", "--model", clip_run, "--dataset", "shapes?n=4", "--c-max", "nan"]
    assert_clear_error(run_cli(capsys, probe), "--c-max")
    limber = ["train", "limber", "--encoder", f"clip:{clip_run}", "--lm", models.lm, "--out", tmp_path / "l", "--steps", "0"]
    assert_clear_error(run_cli(capsys, limber), "--steps")
    assert not (tmp_path / "l").exists()


# ------------------------------------------------------------------------------- devices
@NO_GPU
def test_device_cuda_without_a_gpu_in_every_command_that_takes_it(capsys, tmp_path, world, clip_run, models):
    image = sorted((world / "images").glob("*.png"))[0]
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"cands": {image.stem: "a circle"}}))
    commands = [
        ["eval", "zeroshot", "--model", clip_run, "--dataset", "shapes?n=4"],
        ["extract", "--encoder", f"clip:{clip_run}", "--dataset", "shapes", "--n", "3", "--cache", tmp_path / "c"],
        ["score", "clip", "--images", image, "--captions", captions, "--model", clip_run],
        ["caption", image, "--model", models.limber],
        ["vqa", image, "--question", "what?", "--model", models.limber],
        ["index", "build", "--clip", clip_run, "--from", f"folder:{world}", "--out", tmp_path / "i"],
        ["train", "ssl", "--out", tmp_path / "s"],
        ["train", "limber", "--encoder", f"clip:{clip_run}", "--lm", models.lm, "--out", tmp_path / "l"],
    ]
    for argv in commands:
        assert "GPU" in assert_clear_error(run_cli(capsys, [*argv, "--device", "cuda"], timeout=45), "--device cuda")


# ------------------------------------------------------------------------------- files
def test_a_named_pipe_given_as_an_image(capsys, tmp_path, models, clip_run):
    pipe = fifo(tmp_path / "pipe.png")
    assert_clear_error(run_cli(capsys, ["caption", pipe, "--model", models.limber, "--device", "cpu"], timeout=20), str(pipe))
    folder = tmp_path / "pairs"
    write_images(folder, 2, image_size=32)
    fifo(folder / "fifo.png")
    (folder / "fifo.txt").write_text("a pipe\n")
    result = run_cli(capsys, ["data", "export", "--from", f"folder:{folder}", "--out", tmp_path / "o", "--format", "jsonl"], timeout=20)
    assert result.code == 0 and "exported 2 records" in result.out and "skipped 1 samples" in result.out


def test_prompts_longer_than_the_lms_context(capsys, models, image):
    long_text = "what colour is the circle " * 200
    for argv in (["vqa", image, "--question", long_text, "--model", models.limber, "--device", "cpu"],
                 ["caption", image, "--prompt", long_text, "--model", models.limber, "--device", "cpu"]):
        line = assert_clear_error(run_cli(capsys, argv, timeout=60), "positions")
        assert "at most 256 positions" in line


def test_support_answers_longer_than_the_context_drop_the_oldest_shots(capsys, tmp_path, models, image):
    support = tmp_path / "support.jsonl"
    rows = [{"question_id": f"q{i}", "image_id": f"s{i}", "image": str(image), "question": "what colour is it?",
             "answers": ["red " * 60]} for i in range(4)]  # each solved example takes ~70 of the LM's 256 positions
    support.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    argv = ["vqa", image, "--question", "what colour?", "--shots", "4", "--support", support, "--model", models.limber,
            "--device", "cpu"]
    result = run_cli(capsys, argv, timeout=60)
    assert result.code == 0 and "Traceback" not in result.err
    assert re.search(r"warning: [1-4] of 4 solved examples left out so the prompt fits the LM's context", result.err)


def test_same_stem_different_extensions_in_one_folder(capsys, tmp_path, image):
    folder = tmp_path / "pairs"
    folder.mkdir()
    for suffix in (".png", ".jpg"):
        (folder / f"a{suffix}").write_bytes(image.read_bytes())
    (folder / "a.txt").write_text("a caption\n")
    result = exported(capsys, f"folder:{folder}", tmp_path / "out")
    assert result.code == 0 and "exported 1 records" in result.out and "1 image with the same name" in result.out


def test_folder_export_keeps_non_ascii_ids_and_one_line_per_name(capsys, tmp_path, image):
    source = tmp_path / "data.jsonl"
    ids = ["café-ü", "東京", "new\nline"]
    source.write_text("".join(jsonl_line(i, image, [f"caption of {i!r}"]) for i in ids), encoding="utf-8")
    result = exported(capsys, f"jsonl:{source}", tmp_path / "out", "folder")
    assert result.code == 0 and "exported 3 records" in result.out
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.txt")) == sorted(["café-ü", "東京", "new_line"])


def test_newline_in_a_file_name_keeps_one_output_line(capsys, tmp_path, models, image):
    odd = tmp_path / "two\nlines\tand tab.png"
    odd.write_bytes(image.read_bytes())
    result = run_cli(capsys, ["caption", image, odd, "--model", models.limber, "--device", "cpu"], timeout=60)
    assert result.code == 0
    lines = result.out.splitlines()
    assert len(lines) == 2 and lines[1].startswith(str(odd).replace("\n", "\\n").replace("\t", "\\t") + "\t")


@FUZZ
@given(kinds=st.lists(st.sampled_from(["good", "empty", "missing", "surrogate", "junk"]), min_size=1, max_size=8))
def test_counters_match_what_was_written(capsys, tmp_path_factory, image, kinds):
    folder = tmp_path_factory.mktemp("count")
    (folder / "junk.png").write_bytes(b"not an image")
    lines = []
    for number, kind in enumerate(kinds):
        path = {"missing": folder / "gone.png", "junk": folder / "junk.png"}.get(kind, image)
        caption = {"empty": " ", "surrogate": "x \ud800"}.get(kind, f"caption {number}")
        lines.append(jsonl_line(f"r{number}", path, [caption]))
    (folder / "data.jsonl").write_text("".join(lines), encoding="utf-8")
    good = kinds.count("good")
    result = exported(capsys, f"jsonl:{folder / 'data.jsonl'}", folder / "out")
    if good == 0:  # nothing to write: refused by the reader, or an empty export that says so
        if result.code:
            assert_clear_error(result, "no usable records")
        else:
            assert "exported 0 records" in result.out
        return
    assert result.code == 0 and f"exported {good} records" in result.out
    written = (folder / "out" / "captions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(written) == good == len(list((folder / "out" / "images").iterdir()))
    skipped = len(kinds) - good
    assert (f"skipped {skipped} samples" in result.out) if skipped else ("no samples skipped" in result.out)


def test_user_data_is_not_capped_by_the_worlds_default_n(tmp_path, world):
    from vlbridge.training.limber import LimberTrainConfig
    from vlbridge.training.limber_data import WORLD_DEFAULT_N, load_caption_records

    data = LimberTrainConfig().data
    on_disk = load_caption_records(f"jsonl:{world / 'captions.jsonl'}", split="train", n=data.n)
    assert len(on_disk) == sum(1 for line in (world / "captions.jsonl").read_text().splitlines() if '"train"' in line)
    assert data.n == 0 and WORLD_DEFAULT_N == 2000


@pytest.mark.slow
def test_eval_retrieval_scores_what_its_json_says(capsys, tmp_path, clip_run):
    """`eval retrieval --dataset "shapes?n=4"`: the JSON's split is the split scored, with n= images."""
    out = tmp_path / "retrieval.json"
    argv = ["eval", "retrieval", "--model", clip_run, "--dataset", "shapes?n=4", "--device", "cpu",
            "--cache", tmp_path / "cache", "--out", out]
    assert run_cli(capsys, argv, timeout=300).code == 0
    result = json.loads(out.read_text())
    assert result["split"] == "test" and result["metrics"]["n_images"] == 4
