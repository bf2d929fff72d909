"""`run_study`: the encoder-comparison experiment end to end, stage by stage, cached.

Stages (each content-hashed, see cache.py; a rerun only redoes what changed):
    clip         train a CLIP on the embedded image-text data
    ssl          train the self-supervised encoder (no language)
    clip-table   zero-shot vs linear probes per dataset, robustness under shapes-world shifts
    projector/K  one LiMBeR projector per encoder key K (clip, supervised, ...)
    limber-eval/K  captioning (shapes by domain, Twemoji) and few-shot VQA for K
    blind        the no-image VQA baseline
then `report.write_report` turns the numbers into results.json, report.md and report.html.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from vlbridge.config import to_dict
from vlbridge.data.features import FeatureStore
from vlbridge.study import clip_stages, limber_stages
from vlbridge.study.cache import StageCache, StageResult, content_key
from vlbridge.study.config import StudyConfig
from vlbridge.study.report import ReportExtras, write_report

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    from vlbridge.assets import cache_root

    return cache_root() / "study"


class StudyRun:
    """Runs the stages in order and remembers what each one took."""

    def __init__(self, config: StudyConfig, force: bool = False, announce=print):
        self.config = config  # resolved study config
        root = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
        self.cache = StageCache(root, force=force)  # content-hashed stage outputs
        self.store = FeatureStore(root / "features")  # encoder features shared by all stages
        self.timing: dict[str, float] = {}  # stage -> seconds spent in this run
        self.announce = announce  # prints one line per stage (the CLI passes print)

    def stage(self, name: str, key: str, build) -> StageResult:
        self.announce(f"[study] {name} ...")
        started = time.perf_counter()
        result = self.cache.run(name, key, build)
        self.timing[name] = time.perf_counter() - started
        state = "cached" if result.reused else "done"
        self.announce(f"[study] {name}: {state} in {self.timing[name]:.1f}s")
        return result


def run_study(config: StudyConfig, out_dir: str | Path, force: bool = False, announce=print) -> dict:
    """Run every stage (reusing cached ones), write the report into out_dir, return results."""
    run = StudyRun(config, force, announce)
    clip_dir = ssl_dir = None
    upstream: dict[str, str] = {}  # stage keys later stages depend on
    if config.train_clip:
        clip = run.stage("clip", content_key(to_dict(config.clip), config.seed), lambda d: clip_stages.build_clip(config, d))
        clip_dir, upstream["clip"] = clip.path, clip.key
    if config.train_ssl:
        ssl = run.stage("ssl", content_key(to_dict(config.ssl), config.seed), lambda d: _build_ssl(config, d))
        ssl_dir, upstream["ssl"] = ssl.path, ssl.key
    fill = lambda spec: limber_stages.fill_spec(spec, config, clip_dir, ssl_dir)  # noqa: E731
    specs = {key: fill(template) for key, template in config.limber.encoders.items()}
    results: dict = {"clip": {}, "captioning": {}, "vqa": {}}
    if config.clip_table.datasets:
        clip_spec = fill(config.clip_table.model)
        probe_specs = {key: fill(spec) for key, spec in config.clip_table.probe_encoders.items()}
        table = run.stage("clip-table", content_key(upstream, clip_spec, probe_specs, to_dict(config.clip_table)),
                          lambda d: clip_stages.build_clip_table(config, clip_spec, probe_specs, run.store, d))
        results["clip"] = json.loads((table.path / "table.json").read_text())
    scorer = _clip_scorer(fill(config.limber.clip_scorer), config) if config.limber.clip_scorer else None
    evals, curves, projectors = {}, {}, {}
    for key, spec in specs.items():
        projector = run.stage(f"projector/{key}", content_key(spec, upstream, to_dict(config.limber.train)),
                              lambda d, s=spec: limber_stages.build_projector(config, s, run.store, d))
        projectors[key] = projector
        curves[key] = json.loads((projector.path / "losses.json").read_text())["losses"]
        evaluated = run.stage(f"limber-eval/{key}", content_key(projector.key, to_dict(config.limber), config.paper),
                              lambda d, p=projector.path: limber_stages.build_limber_eval(config, p, run.store, scorer, d))
        evals[key] = json.loads((evaluated.path / "eval.json").read_text())
    any_projector = next(iter(projectors.values())).path  # blind prompts carry no image: any LM wrapper will do
    blind = run.stage("blind", content_key(config.limber.train.lm, to_dict(config.limber), config.paper, config.seed),
                      lambda d: limber_stages.build_blind(config, any_projector, d))
    scorer_name = scorer.name if scorer is not None else None
    results["captioning"] = {key: caption_summary(ev["captioning"], scorer_name) for key, ev in evals.items()}
    results["vqa"] = {key: shot_summary(ev["vqa"], config.limber.shots) for key, ev in evals.items()}
    results["vqa"]["blind"] = shot_summary(json.loads((blind.path / "eval.json").read_text())["vqa"], config.limber.shots)
    results["vqa_by_answer_type"] = {key: ev["vqa"]["by_answer_type"] for key, ev in evals.items()}
    results["timing_s"] = {name: round(seconds, 2) for name, seconds in run.timing.items()}
    results["config"] = to_dict(config)
    paths = write_report(results, out_dir, _extras(config, clip_dir, curves, evals))
    write_manifest(run.cache.root, config, out_dir, clip_dir, {key: p.path for key, p in projectors.items()})
    announce(f"[study] report: {paths['html']} (markdown: {paths['markdown']}, numbers: {paths['results']})")
    return results


MANIFEST = "latest-{preset}.json"  # in the cache root: where the newest run of a preset left its models


def write_manifest(cache_root: Path, config: StudyConfig, out_dir, clip_dir: Path | None, projectors: dict[str, Path]) -> Path:
    """Record the newest finished run of this preset: its report folder and the trained models' folders."""
    from vlbridge.io import atomic_write_json

    path = Path(cache_root) / MANIFEST.format(preset=config.preset)
    manifest = {
        "preset": config.preset,
        "out_dir": str(Path(out_dir).resolve()),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "clip": str(clip_dir) if clip_dir is not None else None,
        "projectors": {key: str(folder) for key, folder in projectors.items()},
    }
    atomic_write_json(path, manifest)
    return path


def read_manifest(preset: str = "default", cache_dir: str | Path | None = None) -> dict | None:
    """The manifest `write_manifest` left for `preset` (None when no run of it has finished)."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    path = root / MANIFEST.format(preset=preset)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _build_ssl(config: StudyConfig, folder: Path) -> None:
    from dataclasses import replace

    from vlbridge.training.ssl import train_ssl

    train_ssl(replace(config.ssl, seed=config.seed, device=config.device), folder)


def _clip_scorer(spec: str, config: StudyConfig):
    from vlbridge.models.clip_loading import load_clip
    from vlbridge.runtime import resolve_device

    return load_clip(spec, device=resolve_device(config.device))


def caption_summary(by_set: dict, scorer_name: str | None) -> dict:
    """results.json entry of one encoder: the first set's scores at the top, domains and other sets below."""
    headline = next(iter(by_set.values()))
    entry = {name: headline.get(name) for name in ("CIDEr-D", "CLIP-S", "RefCLIP-S", "BLEU-4", "ROUGE-L")}
    entry["by_domain"] = next((scores["by_domain"] for scores in by_set.values() if "by_domain" in scores), {})
    entry["scorer"] = scorer_name
    entry["sets"] = {name: {m: scores.get(m) for m in ("CIDEr-D", "CLIP-S", "RefCLIP-S", "BLEU-4", "ROUGE-L")}
                     for name, scores in by_set.items()}
    return entry


def shot_summary(vqa: dict, shots: list[int]) -> dict:
    return {str(n): vqa[str(n)] for n in shots}


def _extras(config: StudyConfig, clip_dir: Path | None, curves: dict, evals: dict) -> ReportExtras:
    """Curves, the caption grid and the similarity heatmap for the report."""
    from vlbridge.data.records import BadImage, open_image

    records = next(iter(limber_stages.caption_records(config).values()))[: config.limber.sample_images]
    first_set = next(iter(config.limber.caption_sets))
    by_id = {key: {s["id"]: s["caption"] for s in ev["captioning"][first_set]["samples"]} for key, ev in evals.items()}
    images, captions = [], []
    for record in records:
        try:
            images.append(open_image(record.image))
        except BadImage:
            continue
        captions.append({"reference": record.captions[0], **{k: by_id[k].get(record.id, "") for k in by_id}})
    extras = ReportExtras(limber_curves=curves, sample_images=images, sample_captions=captions)
    if clip_dir is not None:
        extras.clip_curve = clip_stages.read_curve(clip_dir)
        extras.similarity, extras.similarity_rows, extras.similarity_cols = clip_stages.similarity_matrix(
            clip_dir, 10, config.seed)
    return extras
