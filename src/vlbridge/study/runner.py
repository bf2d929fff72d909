"""`run_study`: the study end to end, stage by stage, cached, for each seed.

Stages per seed (each content-hashed, see cache.py; a rerun only redoes what changed):
    rung/R           the supervision ladder: one backbone made four ways (clip_stages.build_rung)
    scorer           an independent CLIP for CLIP-S / RefCLIP-S (scorer.independent only)
    clip-table       zero-shot vs linear probes per dataset, robustness under shifts
    projector/K      one LiMBeR projector per encoder key K; projector/clip:closed-form and
                     projector/clip:plain are the ablation rows
    eval/K           caption NLL, generated captions, few-shot VQA (NLL only for ablations)
    baselines        blind NLL and VQA, text-ceiling NLL
then `measure.assemble` turns the stage outputs into results.json (findings with intervals,
tables, sizes, encoders, environment) and `report.write_report` writes report.md / .html.
Keys are made from config sections and upstream keys, never from paths, and results.json holds
no path, so two runs with separate caches give the same results.json apart from timing_s.

Under torchrun (`env` a world of N) every rank runs this same sequence of stages. The projector
stages train with every rank (DDP, as `torchrun -m vlbridge train limber`: each rank takes its
share of the global batch); every other stage runs on rank 0 alone, inside `runtime.local_world()`
so its trainers and feature extraction see a world of one, while the other ranks wait for its
result in a gloo group with a long timeout (`runtime.waiting_group`). Only rank 0 takes the stage
locks and writes into the stage cache, the manifest and the report; every rank returns the results.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from vlbridge.config import to_dict
from vlbridge.data.features import FeatureStore
from vlbridge.runtime import DistEnv, broadcast_object, local_world, resolve_device, waiting_group
from vlbridge.study import clip_stages, limber_stages, measure
from vlbridge.study.cache import StageCache, StageResult, content_key
from vlbridge.study.config import StudyConfig
from vlbridge.study.placeholders import fill, needs
from vlbridge.study.report import ReportExtras, write_report

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    from vlbridge.assets import cache_root

    return cache_root() / "study"


class StudyRun:
    """Runs the stages in order and remembers what each one took."""

    def __init__(self, config: StudyConfig, force: bool = False, announce=print, env: DistEnv | None = None):
        self.config = config  # resolved study config
        root = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
        self.cache = StageCache(root, force=force)  # content-hashed stage outputs
        self.store = FeatureStore(root / "features")  # encoder features shared by all stages
        self.timing: dict[str, float] = {}  # stage -> seconds spent in this run
        self.env = env or DistEnv(device=resolve_device(config.device))  # this rank (a world of one without torchrun)
        self.announce = announce if self.env.is_main else _silent  # one line per stage, from rank 0
        self.group = waiting_group(self.env)  # where ranks wait for rank 0's stages (None: one process)

    def stage(self, name: str, key: str, build, distributed: bool = False) -> StageResult:
        """Stage `name` from the cache or `build`; `distributed`: every rank builds (DDP), else rank 0 alone."""
        self.announce(f"[study] {name} ...")
        started = time.perf_counter()
        if distributed:
            result = self.cache.run(name.split("@")[0], key, build, self.env, self.group)
        else:
            result = self.on_main(lambda: self.cache.run(name.split("@")[0], key, build))
        self.timing[name] = time.perf_counter() - started
        state = "cached" if result.reused else "done"
        self.announce(f"[study] {name}: {state} in {self.timing[name]:.1f}s")
        return result

    def on_main(self, work):
        """`work()` on rank 0 alone, seeing a world of one; its return value on every rank."""
        if not self.env.distributed:
            return work()
        value = None
        if self.env.is_main:
            with local_world():
                value = work()
        return broadcast_object(value, self.env, self.group)


def _silent(_line: str) -> None:
    """The announce of ranks other than 0: the stage lines are printed once."""


@dataclass
class SeedOutputs:
    """What one seed's stages produced (folders and parsed JSON)."""

    seed: int
    folders: dict[str, Path] = field(default_factory=dict)  # placeholder -> folder ({tower:R}, {clip}, {scorer})
    encoders: dict[str, dict] = field(default_factory=dict)  # rung -> summary.json
    clip_table: dict | None = None  # table.json
    projectors: dict[str, Path] = field(default_factory=dict)  # key (or key:variant) -> projector folder
    projector_info: dict[str, dict] = field(default_factory=dict)  # key -> losses.json
    evals: dict[str, dict] = field(default_factory=dict)  # key (or key:variant) -> eval.json
    baselines: dict = field(default_factory=dict)  # eval.json of the no-image baselines


def run_study(config: StudyConfig, out_dir: str | Path, force: bool = False, announce=print,
              env: DistEnv | None = None) -> dict:
    """Run every stage of every seed (reusing cached ones), write the report into out_dir, return results.

    `env`: this rank under torchrun (every rank calls run_study; rank 0 writes the report and
    the manifest, every rank returns the results).
    """
    run = StudyRun(config, force, announce, env)
    seeds = [config.seed + i for i in range(config.n_seeds)]
    outputs = [run_seed(run, config, seed, tag=f"@{seed}" if config.n_seeds > 1 else "") for seed in seeds]
    return run.on_main(lambda: _finish(run, config, outputs, out_dir))


def _finish(run: StudyRun, config: StudyConfig, outputs: list[SeedOutputs], out_dir: str | Path) -> dict:
    """results.json, report.md / .html and the manifest (rank 0); the results."""
    results = measure.assemble(config, outputs, run.timing)
    paths = write_report(results, out_dir, _extras(config, outputs[0]))
    first = outputs[0]
    write_manifest(run.cache.root, config, out_dir, first.folders.get("clip"),
                   {key: path for key, path in first.projectors.items() if ":" not in key})
    run.announce(f"[study] report: {paths['html']} (markdown: {paths['markdown']}, numbers: {paths['results']})")
    return results


def run_seed(run: StudyRun, config: StudyConfig, seed: int, tag: str) -> SeedOutputs:
    out = SeedOutputs(seed)
    keys: dict[str, str] = {}  # placeholder -> stage key (what later keys depend on, instead of paths)
    if config.train_encoders:
        for rung in config.ladder.rungs:
            stage = run.stage(f"rung/{rung}{tag}", content_key("rung", rung, to_dict(config.ladder), seed),
                              lambda d, r=rung: clip_stages.build_rung(config, r, seed, d))
            out.folders[f"tower:{rung}"], keys[f"tower:{rung}"] = stage.path / clip_stages.TOWER_DIR, stage.key
            out.encoders[rung] = clip_stages.summary_of(stage.path)
            if rung == "clip":
                out.folders["clip"], keys["clip"] = stage.path, stage.key
    if config.scorer.independent and config.train_encoders:
        stage = run.stage(f"scorer{tag}", content_key("scorer", to_dict(config.ladder.train), to_dict(config.scorer), seed),
                          lambda d: clip_stages.build_scorer(config, seed, d))
        out.folders["scorer"], keys["scorer"] = stage.path, stage.key
    elif "clip" in out.folders:
        out.folders["scorer"], keys["scorer"] = out.folders["clip"], keys["clip"]
    filled = lambda template: fill(template, out.folders, config.paper)  # noqa: E731
    depends = lambda *templates: {n: keys.get(n) for t in templates for n in sorted(needs(t))}  # noqa: E731
    paper = to_dict(config.paper)
    if config.clip_table.datasets and "clip" in out.folders:
        table = config.clip_table
        probe_specs = {key: filled(spec) for key, spec in table.probe_encoders.items()}
        stage = run.stage(f"clip-table{tag}", content_key("clip-table", depends(table.model, *table.probe_encoders.values()),
                                                         to_dict(table), seed),
                          lambda d: clip_stages.build_clip_table(config, out.folders["clip"], probe_specs, run.store, seed, d))
        out.clip_table = json.loads((stage.path / "table.json").read_text())
    limber = config.limber
    eval_config = {k: v for k, v in to_dict(limber).items() if k not in ("train", "encoders", "twins")}
    scorer = _clip_scorer(filled(limber.clip_scorer), config) if limber.clip_scorer and run.env.is_main else None
    scorer_key = depends(limber.clip_scorer) if limber.clip_scorer else None
    variants = [(key, "trained") for key in limber.encoders]
    if limber.ablations and limber.clip_key in limber.encoders:
        variants += [(limber.clip_key, "closed-form"), (limber.clip_key, "plain")]
    for key, variant in variants:
        template = limber.encoders[key]
        name = key if variant == "trained" else f"{key}:{variant}"
        projector_key = content_key("projector", template, depends(template), to_dict(limber.train), variant, seed, paper)
        projector = run.stage(f"projector/{name}{tag}", projector_key,
                              lambda d, t=template, v=variant: limber_stages.build_projector(
                                  config, filled(t), run.store, seed, d, v, filled, run.env),
                              distributed=True)
        out.projectors[name] = projector.path
        out.projector_info[name] = json.loads((projector.path / "losses.json").read_text())
        nll_only = variant != "trained"
        evaluated = run.stage(f"eval/{name}{tag}", content_key("eval", projector.key, eval_config, scorer_key, nll_only,
                                                                seed, paper),
                              lambda d, p=projector.path, o=nll_only: limber_stages.build_eval(
                                  config, p, run.store, scorer, seed, d, o, filled))
        out.evals[name] = limber_stages.read_eval(evaluated.path)
    any_projector = next(iter(out.projectors.values()))  # the baselines carry no image: any LM wrapper will do
    baselines = run.stage(f"baselines{tag}", content_key("baselines", limber.train.lm, eval_config, seed, paper),
                          lambda d: limber_stages.build_baselines(config, any_projector, seed, d, filled))
    out.baselines = limber_stages.read_eval(baselines.path)
    return out


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


def _clip_scorer(spec: str, config: StudyConfig):
    from vlbridge.models.clip_loading import load_clip

    return load_clip(spec, device=resolve_device(config.device))


def _extras(config: StudyConfig, first: SeedOutputs) -> ReportExtras:
    """Curves, the caption grid and the similarity heatmap for the report (from the first seed)."""
    from vlbridge.data.records import BadImage, open_image

    curves = {key: info["losses"] for key, info in first.projector_info.items() if info.get("losses")}
    ladder_curves = {rung: summary.get("losses", []) for rung, summary in first.encoders.items() if summary.get("losses")}
    extras = ReportExtras(limber_curves=curves, ladder_curves=ladder_curves)
    caption_sets = limber_stages.caption_records(config, lambda t: fill(t, first.folders, config.paper))
    if caption_sets:
        first_set = next(iter(caption_sets))
        records = caption_sets[first_set][: config.limber.sample_images]
        by_id = {key: {s["id"]: s["caption"] for s in ev["captioning"][first_set]["samples"]}
                 for key, ev in first.evals.items() if "captioning" in ev and first_set in ev["captioning"]}
        for record in records:
            try:
                extras.sample_images.append(open_image(record.image))
            except BadImage:
                continue
            extras.sample_captions.append({"reference": record.captions[0],
                                           **{k: by_id[k].get(record.id, "") for k in by_id}})
    if "clip" in first.folders:
        extras.similarity, extras.similarity_rows, extras.similarity_cols = clip_stages.similarity_matrix(
            first.folders["clip"], 10, config.seed)
    return extras
