"""`vlbridge serve` argument checks and `--demo` (vlbridge.serve.demo) on a study manifest pointing at tiny models.

Spec: without a finished study run, --demo prints one line that says to run `make demo` first; with one,
it serves the run's "clip" projector and CLIP, with the study preset's VQA wording, and builds the
embedded-data index once, reusing it afterwards. Wrong paths are one-line errors before any loading.
"""

from __future__ import annotations

import json

import pytest

from vlbridge.cli import main


def test_demo_without_a_study_says_what_to_run(tmp_path, capsys):
    assert main(["serve", "--demo", "--cache", str(tmp_path / "empty-cache")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no finished `default` study run" in err and "run `make demo` (or `vlbridge study`) first" in err


@pytest.mark.parametrize("argv,fragment", [
    (["serve"], "nothing to serve"),
    (["serve", "--demo", "--model", "x"], "leave out --model"),
    (["serve", "--model", "{tmp}"], "is not a LiMBeR model"),
    (["serve", "--clip", "{tmp}/missing"], "does not exist"),
    (["serve", "--index", "{tmp}"], "is not a search index"),
    (["serve", "--clip", "{tmp}", "--max-batch", "0"], "--max-batch must be a whole number from 1"),
])
def test_serve_arguments_are_checked_before_loading(tmp_path, capsys, argv, fragment):
    assert main([arg.format(tmp=tmp_path) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1


def write_manifest(cache, models, preset="default"):
    cache.mkdir(parents=True, exist_ok=True)
    manifest = {"preset": preset, "out_dir": str(cache / "report"), "finished_at": "2026-12-02T08:00:00+0000",
                "clip": str(models.clip), "projectors": {"clip": str(models.limber), "supervised": str(models.limber)}}
    (cache / f"latest-{preset}.json").write_text(json.dumps(manifest))


def test_demo_serves_the_studys_clip_projector_and_builds_its_index_once(serve_models, tmp_path, monkeypatch):
    from vlbridge.evaluation.vqa import FROZEN_TEMPLATE
    from vlbridge.serve import demo

    models, _ = serve_models
    write_manifest(tmp_path / "cache", models)
    monkeypatch.setattr(demo, "DEMO_SOURCES", ("shapes?split=test&n=6&image_size=40", "twemoji-not-a-spec", "shapes?split=train&n=3"))
    paths = demo.demo_paths("default", tmp_path / "cache")
    assert (paths.limber, paths.clip) == (models.limber, models.clip)
    assert paths.index == tmp_path / "cache" / "serve-index" / models.clip.name
    assert paths.vqa_template == FROZEN_TEMPLATE  # the default preset's wording

    import vlbridge.api.index_build as index_build
    from vlbridge.errors import AssetMissingError

    real_add = index_build.add_to_index

    def add_unless_missing(root, source, clip, *args, **kwargs):
        if source == "twemoji-not-a-spec":
            raise AssetMissingError("asset twemoji is missing")
        return real_add(root, source, clip, *args, **kwargs)

    monkeypatch.setattr(index_build, "add_to_index", add_unless_missing)
    services = demo.load_demo_services(paths)
    assert len(services.index) == 9 and services.model_ids() == {"limber": "limber:demo", "clip": "clip:demo"}
    shots = services.example_shots  # solved questions of different kinds, for the page's "examples"
    assert len(shots) == demo.DEMO_SHOTS and len({" ".join(s["question"].split()[:2]) for s in shots}) == demo.DEMO_SHOTS
    assert all(s["answer"].strip() and s["image"].size[0] > 0 for s in shots)
    stamp = (paths.index / "index.json").stat().st_mtime_ns
    assert len(demo.load_demo_services(paths).index) == 9
    assert (paths.index / "index.json").stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_demo_refuses_a_manifest_without_the_clip_projector(serve_models, tmp_path):
    from vlbridge.errors import UserError
    from vlbridge.serve.demo import demo_paths

    models, _ = serve_models
    write_manifest(tmp_path, models)
    manifest = json.loads((tmp_path / "latest-default.json").read_text())
    manifest["projectors"].pop("clip")
    (tmp_path / "latest-default.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="no 'clip' projector"):
        demo_paths("default", tmp_path)
