"""Tests for the study: the stage cache, the report writer, config presets, and the quick preset end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlbridge.cli import main
from vlbridge.errors import UserError
from vlbridge.study.cache import StageCache, content_key
from vlbridge.study.config import load_study_config
from vlbridge.study.report import ReportExtras, write_report
from vlbridge.study.runner import read_manifest

ENCODERS = ["clip", "supervised", "self-supervised", "random-clip", "random-supervised"]
SHOTS = ["0", "1", "2", "4"]


def test_stage_cache_runs_once_per_key_and_never_leaves_half_stages(tmp_path):
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "out.txt").write_text("x")

    cache = StageCache(tmp_path)
    first = cache.run("stage", content_key({"a": 1}), build)
    again = cache.run("stage", content_key({"a": 1}), build)
    other = cache.run("stage", content_key({"a": 2}), build)
    assert len(calls) == 2 and not first.reused and again.reused and not other.reused
    assert (again.path / "out.txt").read_text() == "x" and first.path == again.path != other.path

    def broken(folder):
        (folder / "partial").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.run("stage", content_key({"a": 3}), broken)
    assert not (tmp_path / "stage" / content_key({"a": 3})).exists()
    forced = StageCache(tmp_path, force=True).run("stage", content_key({"a": 1}), build)
    assert not forced.reused and len(calls) == 3


def test_content_key_is_order_independent_and_sensitive():
    assert content_key({"a": 1, "b": 2}) == content_key({"b": 2, "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 1.5})


def test_presets_and_overrides():
    quick = load_study_config("quick", overrides=["limber.train.steps=3", "seed=5"])
    default = load_study_config("default")
    assert quick.limber.train.steps == 3 and quick.seed == 5
    assert load_study_config("quick", overrides=["limber.train.max_steps=3", "seed=5"]) == quick  # the old key name
    assert quick.clip.steps < default.clip.steps
    assert list(default.limber.encoders) == ENCODERS
    assert set(default.limber.caption_sets) == {"shapes", "twemoji"}
    with pytest.raises(UserError, match="unknown preset"):
        load_study_config("huge")
    with pytest.raises(UserError, match="unknown config key"):
        load_study_config("quick", overrides=["limber.nosuch=1"])


def test_report_writes_tables_plots_and_json(tmp_path):
    results = {
        "clip": {"zero_shot": {"shapes": {"top1": 0.9, "top5": 1.0, "mean_per_class_recall": 0.85}},
                 "templates": {"shapes": "shapes"},
                 "linear_probe": {"shapes": {"top1": 0.95, "by_features": {"clip": 0.95, "supervised": 0.7}}},
                 "robustness": {"sketch": {"zero_shot": 0.5, "zero_shot_drop": 0.4, "probe": 0.6, "probe_drop": 0.35}}},
        "captioning": {"clip": {"CIDEr-D": 1.2, "CLIP-S": 0.7, "RefCLIP-S": 0.8, "by_domain": {"in": {"CIDEr-D": 1.3}}}},
        "vqa": {"clip": {"0": 0.3, "4": 0.6}, "blind": {"0": 0.2, "4": 0.3}},
        "timing_s": {"clip": 1.0}, "config": {"preset": "quick", "limber": {"vqa_template": "Question: {question} Answer:"}},
    }
    extras = ReportExtras(clip_curve=[(1, 2.0), (2, 1.0)], limber_curves={"clip": [(1, 3.0), (2, 2.0)]},
                          sample_images=[Image.new("RGB", (32, 32), "red")], sample_captions=[{"clip": "a red square"}],
                          similarity=np.eye(2), similarity_rows=["a", "b"], similarity_cols=["x", "y"])
    paths = write_report(results, tmp_path, extras)
    assert json.loads(paths["results"].read_text()) == results
    markdown = paths["markdown"].read_text()
    assert "| shapes | shapes | 90.0 | 100.0 | 85.0 | 95.0 | 70.0 |" in markdown
    assert "| clip | 30.0 | 60.0 |" in markdown and "| blind | 20.0 | 30.0 |" in markdown
    assert 'worded "Question: {question} Answer:"' in markdown
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == 7
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "caption_metrics.png", "clip_loss.png", "limber_loss.png", "sample_captions.png", "similarity.png",
        "vqa_shots.png", "zeroshot_vs_probe.png"]


def _check_fraction(value):
    assert isinstance(value, float) and 0.0 <= value <= 1.0


@pytest.mark.slow
@pytest.mark.assets
def test_quick_study_end_to_end_then_fully_cached(tmp_path, capsys):
    out, cache = tmp_path / "report", tmp_path / "cache"
    assert main(["study", "--preset", "quick", "--out", str(out), "--cache", str(cache)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"clip", "captioning", "vqa", "timing_s", "config"}
    for dataset in ("shapes", "fashion-mnist"):
        scores = results["clip"]["zero_shot"][dataset]
        for name in ("top1", "top5", "mean_per_class_recall"):
            _check_fraction(scores[name])
        _check_fraction(results["clip"]["linear_probe"][dataset]["top1"])
        assert set(results["clip"]["linear_probe"][dataset]["by_features"]) == {"clip", "supervised"}
    assert set(results["clip"]["robustness"]) == {"clean", "sketch"}
    assert list(results["captioning"]) == ENCODERS
    for encoder in ENCODERS:
        entry = results["captioning"][encoder]
        assert entry["CIDEr-D"] >= 0 and 0 <= entry["CLIP-S"] <= 2.5 and entry["RefCLIP-S"] >= 0
        assert set(entry["by_domain"]) == {"in", "near", "out", "entire"}
        assert set(entry["sets"]) == {"shapes", "twemoji"}
    assert list(results["vqa"]) == [*ENCODERS, "blind"]
    for by_shot in results["vqa"].values():
        assert list(by_shot) == SHOTS
        for value in by_shot.values():
            _check_fraction(value)
    assert results["config"]["preset"] == "quick"
    assert results["config"]["limber"]["vqa_template"] == "Question: {question} Answer:"
    assert results["config"]["limber"]["train"]["num_prefix_tokens"] == 8
    assert "projector/clip" in results["timing_s"]
    (clip_stage,) = [d for d in (cache / "clip").iterdir() if not d.name.startswith(".")]
    summary = json.loads((clip_stage / "summary.json").read_text())
    assert summary["steps"] == 30 and "run_dir" not in summary  # no temporary path left behind
    assert (out / "report.md").read_text().startswith("# vlbridge study report (quick preset)")
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 6
    manifest = read_manifest("quick", cache)  # what `vlbridge serve --demo` finds the models through
    assert manifest["out_dir"] == str(out.resolve()) and manifest["clip"] == str(clip_stage)
    assert sorted(manifest["projectors"]) == sorted(ENCODERS)
    assert all((Path(folder) / "model").is_dir() for folder in manifest["projectors"].values())
    assert read_manifest("default", cache) is None
    capsys.readouterr()
    assert main(["study", "--preset", "quick", "--out", str(out), "--cache", str(cache)]) == 0
    printed = capsys.readouterr().out
    assert "done in" not in printed and printed.count(": cached in") == 3 + 2 * len(ENCODERS) + 1
