"""Tests for the study: stage cache, presets, placeholders, the measurement and report layers, and the
quick preset end to end (two fresh runs give the same results.json; a rerun is fully cached)."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from vlbridge.cli import main
from vlbridge.errors import UserError
from vlbridge.study import measure
from vlbridge.study.cache import StageCache, content_key
from vlbridge.study.config import LADDER, load_study_config
from vlbridge.study.limber_stages import word_recall
from vlbridge.study.placeholders import fill, needs
from vlbridge.study.report import ReportExtras, write_report
from vlbridge.study.runner import SeedOutputs, read_manifest

SHOTS = ["0", "1", "2", "4"]


# ------------------------------------------------------------------------------------ cache
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


# ------------------------------------------------------------------------------------ presets
def test_presets_meet_the_minimum_sizes_and_share_one_ladder_recipe():
    default, full, quick = (load_study_config(p) for p in ("default", "full", "quick"))
    for config in (default, full, quick):
        assert list(config.limber.encoders)[:4] == list(LADDER) and config.ladder.rungs == list(LADDER)
        assert all(config.limber.encoders[r] == f"tower:{{tower:{r}}}" for r in LADDER)
        assert config.limber.train.optim.lr == 8e-4 and (config.limber.train.optim.beta1,
                                                          config.limber.train.optim.beta2) == (0.9, 0.95)
        assert len(config.limber.train.ridge_candidates) >= 2  # the closed-form start's ridge is chosen held out
    types = 5  # count, yes/no, object, colour, position
    assert default.limber.vqa_per_type * types >= 100 and "n=300" in default.limber.likelihood_set
    assert full.limber.vqa_per_type * types >= 500 and "n=1000" in full.limber.likelihood_set
    assert full.n_seeds >= 3 and full.scorer.independent and not default.scorer.independent
    assert full.limber.twins["efficientnet"] == "random-efficientnet" and "efficientnet" in full.clip_table.probe_encoders
    assert "efficientnet" not in default.limber.encoders  # the external reference rows cost ~3 min: full preset only
    assert quick.ladder.train.steps < default.ladder.train.steps


def test_overrides_unknown_keys_and_presets():
    quick = load_study_config("quick", overrides=["limber.train.steps=3", "seed=5"])
    assert quick.limber.train.steps == 3 and quick.seed == 5
    assert load_study_config("quick", overrides=["limber.train.max_steps=3", "seed=5"]) == quick  # the old key name
    with pytest.raises(UserError, match="unknown preset"):
        load_study_config("huge")
    with pytest.raises(UserError, match="unknown config key"):
        load_study_config("quick", overrides=["limber.nosuch=1"])
    old = load_study_config("quick", overrides=["clip.steps=7", "train_clip=false"])  # the pre-ladder key names
    assert old.ladder.train.steps == 7 and old.train_encoders is False
    with pytest.raises(UserError, match="n_seeds"):
        load_study_config("quick", overrides=["n_seeds=0"])
    with pytest.raises(UserError, match="unknown rung"):
        load_study_config("quick", overrides=["ladder.rungs=[random,vision]"])


def test_placeholders_fill_known_folders_and_name_missing_ones():
    folders = {"tower:clip": Path("/c/tower"), "clip": Path("/c"), "scorer": Path("/s")}
    paper = SimpleNamespace(lm="/gptj")
    assert fill("tower:{tower:clip}", folders) == "tower:/c/tower"
    assert fill("{scorer}|{clip}|{paper.lm}", folders, paper) == "/s|/c|/gptj"
    assert needs("tower:{tower:labels} {clip}") == {"tower:labels", "clip"}
    with pytest.raises(UserError, match=r"needs \{tower:labels\}"):
        fill("tower:{tower:labels}", folders)
    with pytest.raises(UserError, match="unknown paper path"):
        fill("{paper.nope}", folders, paper)


# ------------------------------------------------------------------------------------ word recall
def test_word_recall_counts_words_most_references_share():
    refs = ["a red circle and a dog", "a dog next to a red circle", "two objects: a dog and a circle"]
    # category words in >= half the refs: circle, dog; property: red (2 of 3)
    assert word_recall("a dog", refs, "category") == (1, 2)
    assert word_recall("two dogs and circles", refs, "category") == (2, 2)  # plurals count
    assert word_recall("a blue circle", refs, "property") == (0, 1)
    assert word_recall("", ["a cat"], "property") == (0, 0)


# ------------------------------------------------------------------------------------ measurement
def _nll_rows(ids, base, category_shift):
    return [{"id": i, "total": base * 10, "tokens": 10, "category": (base + category_shift) * 3,
             "category_tokens": 3, "property": base * 4, "property_tokens": 4} for i in ids]


def _vqa_rows(accuracies):
    return [{"question_id": f"q{i}", "answer_type": "object", "open_answer": "x", "closed_answer": "x",
             "open_accuracy": a, "closed_accuracy": a} for i, a in enumerate(accuracies)]


def _seed_outputs(seed: int, n_images: int = 40, n_questions: int = 30) -> SeedOutputs:
    """Synthetic stage outputs in which captions help, CLIP helps most on categories, shots help."""
    rng = np.random.default_rng(seed)
    ids = [f"img{i}" for i in range(n_images)]
    nll_base = {"random": 5.0, "self-supervised": 3.0, "labels": 2.9, "clip": 2.5}
    category_shift = {"random": 0.0, "self-supervised": 1.0, "labels": 0.6, "clip": 0.0}
    evals = {}
    for key, base in nll_base.items():
        evals[key] = {"nll": _nll_rows(ids, base + rng.normal(0, 0.01), category_shift[key]),
                      "captioning": {"objects": {"CIDEr-D": 0.5, "CLIP-S": 0.6, "RefCLIP-S": 0.7, "BLEU-4": 0.1,
                                                 "ROUGE-L": 0.3, "by_domain": {}, "samples": [
                                                     {"id": i, "caption": "c", "refs": ["r"], "category_recall": [1, 2],
                                                      "property_recall": [1, 1]} for i in ids[:5]]}},
                      "vqa": {s: _vqa_rows((rng.random(n_questions) < (0.6 if key == "clip" and s == "4" else 0.3))
                                           .astype(float).tolist()) for s in SHOTS}}
    table = {"datasets": {"shapes": {"templates": "shapes", "classes": 3, "C": {"clip": 1.0, "random": 1.0},
                                     "zero_shot": {"clean": [1] * 45 + [0] * 5, "blur": [1] * 40 + [0] * 10},
                                     "probes": {"clip": {"clean": [1] * 46 + [0] * 4, "blur": [1] * 30 + [0] * 20},
                                                "random": {"clean": [1] * 30 + [0] * 20, "blur": [1] * 15 + [0] * 35}}}},
             "shifts": ["blur"]}
    summaries = {r: {"backbone": "vl-tiny-rn", "objective": r, "feature_dim": 64, "train_images": 100,
                     "train_steps": 5, "language_supervision": "x", "losses": [[1, 2.0]]} for r in LADDER}
    return SeedOutputs(seed=seed, encoders=summaries, clip_table=table, evals=evals,
                       projector_info={k: {"steps": 3, "final_loss": 2.0, "losses": [[1, 2.0]], "init": {"init": "caption-ridge", "ridge": 0.1},
                                           "feature_dim": 64} for k in nll_base},
                       baselines={"nll": {"blind": _nll_rows(ids, 8.0, 0.0), "text": _nll_rows(ids, 1.0, 0.0)},
                                  "vqa": {s: _vqa_rows([0.0] * n_questions) for s in SHOTS}})


def _config():
    return load_study_config("quick", overrides=["clip_table.datasets=[shapes]", "limber.ablations=false",
                                                 "limber.encoders={random: a, self-supervised: b, labels: c, clip: d}"])


def test_assemble_computes_every_finding_from_paired_units_and_records_sizes():
    config = _config()
    results = measure.assemble(config, [_seed_outputs(0)], {"stage": 1.0})
    by_id = {f["id"]: f for f in results["findings"]}
    assert list(by_id) == ["C1", "C2", "C3", "C4", "C5"]
    for f in by_id.values():
        assert set(f) >= {"id", "claim", "metric", "effect", "ci95", "verdict", "n"}
        assert f["ci95"][0] - 1e-9 <= f["effect"] <= f["ci95"][1] + 1e-9
    assert by_id["C1"]["effect"] == pytest.approx(-0.02) and by_id["C1"]["n"] == 50
    assert by_id["C3"]["verdict"] == "reproduced" and by_id["C3"]["n"] == 40
    assert by_id["C4"]["verdict"] == "reproduced"  # clip gains 1 nat on categories over self-supervised, 0 on properties
    assert by_id["C4"]["effect"] == pytest.approx(1.0, abs=0.05)
    assert results["sizes"] == {"vqa_questions": 30, "nll_captions": 40, "generated_captions": 5, "seeds": 1}
    assert results["likelihood"]["blind"]["nll_per_token"]["value"] == pytest.approx(8.0)
    assert results["clip"]["shapes"]["zero_shot"]["clean"]["value"] == pytest.approx(0.9)
    assert results["vqa"]["blind"]["4"]["open"]["value"] == 0.0 and "closed" in results["vqa"]["clip"]["4"]
    assert results["config"]["cache_dir"] == "" and "timing_s" in results
    assert set(results["encoders"]["clip"]) == {"backbone", "objective", "feature_dim", "train_images",
                                                "train_steps", "language_supervision"}
    assert results["environment"]["packages"]["torch"]


def test_seeds_are_bootstrap_groups_and_widen_nothing_they_do_not_vary():
    config = _config()
    one = measure.assemble(config, [_seed_outputs(0)], {})
    three = measure.assemble(config, [_seed_outputs(s) for s in range(3)], {})
    assert three["sizes"]["seeds"] == 3 and three["likelihood"]["clip"]["nll_per_token"]["n"] == 120
    c1_one = next(f for f in one["findings"] if f["id"] == "C1")
    c1_three = next(f for f in three["findings"] if f["id"] == "C1")
    assert c1_three["effect"] == pytest.approx(c1_one["effect"])  # same per-image results in every seed


def test_findings_not_measurable_say_why():
    config = _config()
    out = _seed_outputs(0)
    out.clip_table = None
    results = measure.assemble(config, [out], {})
    c1 = results["findings"][0]
    assert c1["id"] == "C1" and c1["effect"] is None and c1["verdict"] == "inconclusive" and "not measured" in c1["note"]


def test_report_opens_with_findings_and_shows_intervals(tmp_path):
    config = _config()
    results = measure.assemble(config, [_seed_outputs(0)], {"rung/clip": 2.0})
    extras = ReportExtras(ladder_curves={"clip": [(1, 2.0), (2, 1.0)]}, limber_curves={"clip": [(1, 3.0), (2, 2.0)]},
                          sample_images=[Image.new("RGB", (32, 32), "red")], sample_captions=[{"clip": "a red square"}],
                          similarity=np.eye(2), similarity_rows=["a", "b"], similarity_cols=["x", "y"])
    paths = write_report(results, tmp_path, extras)
    assert json.loads(paths["results"].read_text())["findings"] == results["findings"]
    markdown = paths["markdown"].read_text()
    sections = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Findings"
    assert "C3: reproduced" in markdown and "95 % CI" in markdown
    assert "| clip | 250.000 |" not in markdown and "2.500 [" in markdown  # NLL with its interval
    assert "scorer is the ladder's own CLIP" in markdown  # the caveat next to CLIP-S
    html = paths["html"].read_text()
    assert "class='v-reproduced'" in html and html.count("data:image/png;base64,") == len(
        list((tmp_path / "plots").iterdir()))
    assert {"findings_points.png", "findings_nats.png", "likelihood.png", "vqa_shots.png"} <= {
        p.name for p in (tmp_path / "plots").iterdir()}


# ------------------------------------------------------------------------------------ end to end
def _without_timing(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in ("timing_s", "wall_s")}


@pytest.mark.slow
@pytest.mark.assets
def test_quick_study_twice_from_fresh_caches_gives_the_same_results_then_reruns_cached(tmp_path, capsys):
    runs = []
    for name in ("a", "b"):
        out, cache = tmp_path / name / "report", tmp_path / name / "cache"
        assert main(["study", "--preset", "quick", "--out", str(out), "--cache", str(cache)]) == 0
        runs.append(json.loads((out / "results.json").read_text()))
    assert _without_timing(runs[0]) == _without_timing(runs[1])
    results = runs[0]
    assert [f["id"] for f in results["findings"]] == ["C1", "C2", "C3", "C4", "C5"]
    assert all(f["verdict"] in ("reproduced", "contradicted", "inconclusive") for f in results["findings"])
    assert set(results["encoders"]) == set(LADDER)
    assert {e["feature_dim"] for k, e in results["encoders"].items() if k in LADDER} == {64}
    assert set(results["likelihood"]) == {*LADDER, "clip:closed-form", "clip:plain", "blind", "text"}
    assert list(results["vqa"]) == [*LADDER, "blind"]
    assert all(list(shots) == SHOTS for shots in results["vqa"].values())
    assert results["sizes"]["seeds"] == 1 and results["sizes"]["vqa_questions"] == 10
    out, cache = tmp_path / "a" / "report", tmp_path / "a" / "cache"
    assert (out / "report.md").read_text().startswith("# vlbridge study report (quick preset)")
    assert str(tmp_path) not in (out / "results.json").read_text()  # no path: caches elsewhere give the same file
    capsys.readouterr()
    assert main(["study", "--preset", "quick", "--out", str(out), "--cache", str(cache)]) == 0
    printed = capsys.readouterr().out
    assert "done in" not in printed and printed.count(": cached in") == len(runs[0]["timing_s"])
    assert printed.splitlines()[-5].startswith("C1 ")
    manifest = read_manifest("quick", cache)  # what `vlbridge serve --demo` finds the models through
    assert manifest["out_dir"] == str(out.resolve()) and Path(manifest["clip"]).is_dir()
    assert (Path(manifest["projectors"]["clip"]) / "model").is_dir()


@pytest.mark.slow
@pytest.mark.assets
def test_stages_side_by_side_give_what_stages_in_order_give_at_the_same_thread_count(tmp_path):
    """A stage built in a forked worker (schedule.py) writes what the in-order run writes with one
    thread: the scheduling changes timing only."""
    import torch

    before = torch.get_num_threads()
    runs = {}
    for workers in (2, 1):
        out, cache = tmp_path / str(workers) / "report", tmp_path / str(workers) / "cache"
        torch.set_num_threads(1)  # what each worker sets; the in-order run builds here
        try:
            assert main(["study", "--preset", "quick", "--out", str(out), "--cache", str(cache),
                         f"workers={workers}", "worker_threads=1"]) == 0
        finally:
            torch.set_num_threads(before)
        runs[workers] = json.loads((out / "results.json").read_text())
    assert runs[2]["environment"]["stages"] == {"workers": 2, "threads_per_worker": 1}
    assert runs[1]["environment"]["stages"] == {"workers": 1, "threads_per_worker": 1}
    assert list(runs[2]["timing_s"]) == list(runs[1]["timing_s"])  # the same stages, reported in plan order
    for results in runs.values():
        results["config"].pop("workers")
        results["environment"].pop("stages")
    assert _without_timing(runs[2]) == _without_timing(runs[1])


def test_report_shows_wall_time_beside_overlapping_stage_times(tmp_path):
    results = measure.assemble(_config(), [_seed_outputs(0)], {"rung/clip": 30.0, "rung/labels": 20.0}, wall_s=31.5,
                               schedule={"workers": 2, "threads_per_worker": 1})
    assert results["wall_s"] == 31.5 and results["environment"]["stages"] == {"workers": 2, "threads_per_worker": 1}
    markdown = write_report(results, tmp_path)["markdown"].read_text()
    assert "| sum of the stages | 50.0 |" in markdown and "| wall time of all stages | 31.5 |" in markdown
    assert "2 stages ran side by side (1 torch thread(s) each)" in markdown
    assert "stages 2 at a time on 1 torch thread(s) each" in markdown  # the machine line


# ------------------------------------------------------------------------------------ rows on the first seeds
def _with_reference_rows(out: SeedOutputs) -> SeedOutputs:
    """Seed outputs plus an external encoder and its random twin (what reference_seeds limits)."""
    for key, base in (("efficientnet", 3.5), ("random-efficientnet", 4.5)):
        out.evals[key] = {**out.evals["labels"], "nll": _nll_rows([r["id"] for r in out.evals["labels"]["nll"]],
                                                                   base, 0.2)}
        out.projector_info[key] = dict(out.projector_info["labels"])
    return out


def _reference_config():
    return load_study_config("quick", overrides=[
        "clip_table.datasets=[shapes]", "limber.ablations=false", "limber.reference_seeds=1",
        "limber.encoders={random: a, self-supervised: b, labels: c, clip: d, efficientnet: e, random-efficientnet: f}",
        "limber.twins={self-supervised: random, labels: random, clip: random, efficientnet: random-efficientnet}"])


def test_rows_scored_on_the_first_seed_only_pair_with_that_seed_and_say_so(tmp_path):
    config = _reference_config()
    seeds = [_with_reference_rows(_seed_outputs(0))] + [_seed_outputs(s) for s in (1, 2)]
    results = measure.assemble(config, seeds, {})
    alone = measure.assemble(config, seeds[:1], {})  # what seed 0 by itself gives
    likelihood = results["likelihood"]
    assert likelihood["efficientnet"]["seeds"] == 1 and likelihood["efficientnet"]["nll_per_token"]["n"] == 40
    assert likelihood["clip"]["seeds"] == 3 and likelihood["clip"]["nll_per_token"]["n"] == 120
    assert likelihood["efficientnet"]["nll_per_token"] == alone["likelihood"]["efficientnet"]["nll_per_token"]
    c3 = next(f for f in results["findings"] if f["id"] == "C3")
    part = next(p for p in c3["parts"] if p["name"] == "random-efficientnet minus efficientnet")
    part_alone = next(p for p in next(f for f in alone["findings"] if f["id"] == "C3")["parts"]
                      if p["name"] == part["name"])
    assert part == part_alone and part["n"] == 40  # paired over seed 0's images, one-seed bootstrap
    assert all(p["n"] == 120 for p in c3["parts"] if p is not part)  # the ladder's twins over all three seeds
    assert results["vqa"]["efficientnet"]["4"]["seeds"] == 1 and results["vqa"]["clip"]["4"]["seeds"] == 3
    assert results["vqa"]["efficientnet"]["4"]["open"]["n"] == 30
    assert len(results["projectors"]["efficientnet"]["final_loss"]) == 1
    assert len(results["projectors"]["clip"]["final_loss"]) == 3
    markdown = write_report(results, tmp_path)["markdown"].read_text()
    assert "| efficientnet (first seed only) |" in markdown and "| clip |" in markdown


def test_a_three_seed_plan_builds_seed_free_stages_once_and_reference_rows_on_the_first_seed(tmp_path):
    from vlbridge.study.runner import StudyRun, plan_seed
    from vlbridge.study.schedule import check_plan

    config = load_study_config("full", overrides=[f"cache_dir={tmp_path}"])
    run = StudyRun(config, announce=lambda _line: None)
    shared: dict = {}
    plans = [plan_seed(run, config, seed, f"@{seed}", index, shared) for index, seed in enumerate((0, 1, 2))]
    stages = [stage for _, part in plans for stage in part]
    check_plan(stages)  # every stage waits only for stages planned before it
    names = [stage.name for stage in stages]
    assert names.count("scorer") == 1 and names.count("baselines-nll") == 1
    assert [n for n in names if "efficientnet" in n or ":" in n.split("/")[-1].split("@")[0]] == [
        n for n in names if n.endswith("@0") and ("efficientnet" in n or "clip:" in n)]
    assert {n for n in names if n.startswith("eval/") and n.endswith("@2")} == {f"eval/{k}@2" for k in LADDER}
    by_name = {stage.name: stage for stage in stages}
    assert "scorer" in by_name["eval/labels@0"].after  # the first seed's captions are scored by the one scorer
    assert by_name["eval/clip@2"].after == ("projector/clip@2",)  # later seeds generate no captions
    outs = [out for out, _ in plans]
    assert len({out.folders["scorer"] for out in outs}) == 1 and len({out.nll_baseline_dir for out in outs}) == 1
    assert len({out.baseline_dir for out in outs}) == 3  # blind VQA draws each seed's shots


def test_later_seeds_score_what_the_findings_pool_and_the_first_seeds_everything():
    from vlbridge.study.runner import eval_parts

    limber = load_study_config("full").limber
    assert eval_parts(limber, "labels", "trained", every_row=True) == ("nll", "captions", "vqa")
    assert eval_parts(limber, "clip", "closed-form", every_row=True) == ("nll",)  # an ablation row
    assert eval_parts(limber, "clip", "trained", every_row=False) == ("nll", "vqa")  # C5 pools clip's VQA
    assert eval_parts(limber, "labels", "trained", every_row=False) == ("nll",)  # C3 / C4 pool the NLL
