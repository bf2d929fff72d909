"""`run_study`: the study end to end, stage by stage, cached, for each seed.

Stages per seed (each content-hashed, see cache.py; a rerun only redoes what changed):
    rung/R           the supervision ladder: one backbone made four ways (clip_stages.build_rung)
    scorer           an independent CLIP for CLIP-S / RefCLIP-S (scorer.independent only)
    clip-table       zero-shot vs linear probes per dataset, robustness under shifts
    projector/K      one LiMBeR projector per encoder key K; projector/clip:closed-form and
                     projector/clip:plain are the ablation rows
    eval/K           caption NLL, generated captions, few-shot VQA (NLL only for ablations)
    baselines-nll    blind and text-ceiling NLL (no seed: built once, read by every seed)
    baselines        blind VQA (this seed's shots)
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
from vlbridge.study.schedule import Stage, can_fork, default_threads, run_side_by_side, stage_kind

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
        self.threads = config.worker_threads or default_threads(config.workers)  # torch threads per stage process

    def stage(self, name: str, key: str, build, distributed: bool = False) -> StageResult:
        """Stage `name` from the cache or `build`; `distributed`: every rank builds (DDP), else rank 0 alone."""
        self.announce(f"[study] {name} ...")
        started = time.perf_counter()
        if distributed:
            result = self.cache.run(stage_kind(name), key, build, self.env, self.group)
        else:
            result = self.on_main(lambda: self.cache.run(stage_kind(name), key, build))
        self.timing[name] = time.perf_counter() - started
        state = "cached" if result.reused else "done"
        self.announce(f"[study] {name}: {state} in {self.timing[name]:.1f}s")
        return result

    def side_by_side(self) -> bool:
        """Stages run in forked processes: asked for, one process (no torchrun), on the CPU, fork available."""
        return (self.config.workers > 1 and not self.env.distributed and self.env.device.type == "cpu"
                and can_fork())

    def schedule(self) -> dict:
        """How the stages ran (results.json["environment"]["stages"])."""
        if self.side_by_side():
            return {"workers": self.config.workers, "threads_per_worker": self.threads}
        import torch

        return {"workers": 1, "threads_per_worker": torch.get_num_threads()}

    def execute(self, stages: list[Stage]) -> None:
        """Build every planned stage: side by side (see schedule.py) or one after another here."""
        if self.side_by_side():
            self.timing.update(run_side_by_side(self.cache, stages, self.config.workers, self.threads, self.announce))
            return
        for stage in stages:
            self.stage(stage.name, stage.key, stage.build, stage.distributed)

    def scorer(self, spec: str):
        """() -> the CLIP-S / RefCLIP-S scorer `spec`, loaded on first call in whichever process calls it."""
        loaded: dict = {}

        def get():
            if "bundle" not in loaded:
                loaded["bundle"] = _clip_scorer(spec, self.config)
            return loaded["bundle"]

        return get

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
    rung_dirs: dict[str, Path] = field(default_factory=dict)  # rung -> its stage folder
    table_dir: Path | None = None  # the clip-table stage folder
    eval_dirs: dict[str, Path] = field(default_factory=dict)  # key (or key:variant) -> eval stage folder
    baseline_dir: Path | None = None  # the blind-VQA baseline stage folder (this seed's shots)
    nll_baseline_dir: Path | None = None  # the blind and text-ceiling NLL stage folder (the same for every seed)


def run_study(config: StudyConfig, out_dir: str | Path, force: bool = False, announce=print,
              env: DistEnv | None = None) -> dict:
    """Run every stage of every seed (reusing cached ones), write the report into out_dir, return results.

    `env`: this rank under torchrun (every rank calls run_study; rank 0 writes the report and
    the manifest, every rank returns the results).
    """
    run = StudyRun(config, force, announce, env)
    started = time.perf_counter()
    seeds = [config.seed + i for i in range(config.n_seeds)]
    shared: dict[str, tuple[Path, str, str]] = {}  # stages every seed reads, planned once (see plan_seed)
    plans = [plan_seed(run, config, seed, tag=f"@{seed}" if config.n_seeds > 1 else "", index=index, shared=shared)
             for index, seed in enumerate(seeds)]
    run.execute([stage for _, stages in plans for stage in stages])
    outputs = [read_outputs(out) for out, _ in plans]
    return run.on_main(lambda: _finish(run, config, outputs, out_dir, time.perf_counter() - started))


def _finish(run: StudyRun, config: StudyConfig, outputs: list[SeedOutputs], out_dir: str | Path,
            stages_s: float) -> dict:
    """results.json, report.md / .html and the manifest (rank 0); the results."""
    results = measure.assemble(config, outputs, run.timing, stages_s, run.schedule())
    paths = write_report(results, out_dir, _extras(config, outputs[0]))
    first = outputs[0]
    write_manifest(run.cache.root, config, out_dir, first.folders.get("clip"),
                   {key: path for key, path in first.projectors.items() if ":" not in key})
    run.announce(f"[study] report: {paths['html']} (markdown: {paths['markdown']}, numbers: {paths['results']})")
    return results


def plan_seed(run: StudyRun, config: StudyConfig, seed: int, tag: str, index: int = 0,
              shared: dict[str, tuple[Path, str, str]] | None = None) -> tuple[SeedOutputs, list[Stage]]:
    """Every stage of one seed, in a valid sequential order, and where each will leave its output.

    Keys are made from config sections and upstream keys only, so the whole plan (and every
    folder) is known before anything runs; `read_outputs` reads the folders once all are built.
    `index`: the seed's position (the first `limber.reference_seeds` score every row; later
    seeds only what the findings pool, see eval_parts). `shared`: stages that do not depend on the seed (the independent
    scorer, the no-image NLL baselines) are planned by the first seed, recorded here as
    {what: (folder, key, stage name)}, and only read by the others.
    """
    out = SeedOutputs(seed)
    stages: list[Stage] = []
    keys: dict[str, str] = {}  # placeholder -> stage key (what later keys depend on, instead of paths)
    names: dict[str, str] = {}  # placeholder -> stage name (what later stages wait for)
    shared = {} if shared is None else shared
    shared_names = {name for _, _, name in shared.values()}  # already full names: never tagged

    def add(name: str, key: str, build, after=(), distributed: bool = False, tagged: bool = True) -> Path:
        full = f"{name}{tag}" if tagged else name
        stages.append(Stage(full, key, build, tuple(a if a in shared_names else f"{a}{tag}" for a in after),
                            distributed))
        if not tagged:
            shared_names.add(full)
        return run.cache.path(name, key)

    def add_shared(what: str, name: str, key: str, build, after=()) -> tuple[Path, str, str]:
        """A stage every seed reads: planned once, by the first seed that asks for it."""
        if what not in shared:
            shared[what] = (add(name, key, build, after, tagged=False), key, name)
        return shared[what]

    if config.train_encoders:
        for rung in config.ladder.rungs:
            key = content_key("rung", rung, to_dict(config.ladder), seed)
            path = add(f"rung/{rung}", key, lambda d, r=rung: clip_stages.build_rung(config, r, seed, d))
            out.folders[f"tower:{rung}"], keys[f"tower:{rung}"], names[f"tower:{rung}"] = \
                path / clip_stages.TOWER_DIR, key, f"rung/{rung}"
            out.rung_dirs[rung] = path
            if rung == "clip":
                out.folders["clip"], keys["clip"], names["clip"] = path, key, f"rung/{rung}"
    if config.scorer.independent and config.train_encoders:  # one scorer for every seed: it is the ruler, not a subject
        key = content_key("scorer", to_dict(config.ladder.train), to_dict(config.scorer), config.seed)
        out.folders["scorer"], keys["scorer"], names["scorer"] = add_shared(
            "scorer", "scorer", key, lambda d: clip_stages.build_scorer(config, config.seed, d))
    elif "clip" in out.folders:
        out.folders["scorer"], keys["scorer"], names["scorer"] = out.folders["clip"], keys["clip"], names["clip"]
    filled = lambda template: fill(template, out.folders, config.paper)  # noqa: E731
    depends = lambda *templates: {n: keys.get(n) for t in templates for n in sorted(needs(t))}  # noqa: E731
    waits = lambda *templates: tuple(dict.fromkeys(names[n] for t in templates for n in sorted(needs(t)) if n in names))  # noqa: E731
    paper = to_dict(config.paper)
    if config.clip_table.datasets and "clip" in out.folders:
        table = config.clip_table
        templates = (table.model, *table.probe_encoders.values())
        probe_specs = {key: filled(spec) for key, spec in table.probe_encoders.items()}
        out.table_dir = add("clip-table", content_key("clip-table", depends(*templates), to_dict(table), seed, config.seed),
                            lambda d: clip_stages.build_clip_table(config, out.folders["clip"], probe_specs,
                                                                  run.store, seed, d),
                            after=waits("{clip}", *templates))
    limber = config.limber
    eval_config = {k: v for k, v in to_dict(limber).items() if k not in ("train", "encoders", "twins")}
    scorer = run.scorer(filled(limber.clip_scorer)) if limber.clip_scorer else lambda: None
    scorer_key = depends(limber.clip_scorer) if limber.clip_scorer else None
    scorer_waits = waits(limber.clip_scorer) if limber.clip_scorer else ()
    every_row = not limber.reference_seeds or index < limber.reference_seeds  # else: the ladder's rows only
    variants = [(key, "trained") for key in limber.encoders if every_row or key in limber.ladder]
    if limber.ablations and limber.clip_key in limber.encoders and every_row:
        variants += [(limber.clip_key, "closed-form"), (limber.clip_key, "plain")]
    for key, variant in variants:
        template = limber.encoders[key]
        name = key if variant == "trained" else f"{key}:{variant}"
        projector_key = content_key("projector", template, depends(template), to_dict(limber.train), variant, seed, paper)
        out.projectors[name] = add(f"projector/{name}", projector_key,
                                   lambda d, t=template, v=variant: limber_stages.build_projector(
                                       config, filled(t), run.store, seed, d, v, filled, run.env),
                                   after=waits(template), distributed=True)
        parts = eval_parts(limber, key, variant, every_row)
        # the key names the parts as before they could vary (nll_only), so earlier caches stay valid
        parts_key = parts == ("nll",) if parts in (limber_stages.EVAL_PARTS, ("nll",)) else list(parts)
        out.eval_dirs[name] = add(f"eval/{name}", content_key("eval", projector_key, eval_config, scorer_key, parts_key,
                                                              seed, paper),
                                  lambda d, p=out.projectors[name], o=parts: limber_stages.build_eval(
                                      config, p, run.store, scorer() if "captions" in o else None, seed, d, o, filled),
                                  after=(f"projector/{name}", *(scorer_waits if "captions" in parts else ())))
    # the baselines carry no image: any projector's LM wrapper will do (the first planned). Their NLL
    # needs no seed either (a frozen LM scoring fixed captions), so every seed reads the first one's
    any_name = next(iter(out.projectors))
    any_projector = out.projectors[any_name]
    out.nll_baseline_dir = add_shared(
        "baselines-nll", "baselines-nll", content_key("baselines-nll", limber.train.lm, eval_config, paper),
        lambda d: limber_stages.build_nll_baselines(config, any_projector, d, filled),
        after=(f"projector/{any_name}",))[0]
    out.baseline_dir = add("baselines", content_key("baselines", limber.train.lm, eval_config, seed, paper),
                           lambda d: limber_stages.build_baselines(config, any_projector, seed, d, filled),
                           after=(f"projector/{any_name}",))
    return out, stages


def eval_parts(limber, key: str, variant: str, every_row: bool) -> tuple[str, ...]:
    """What the evaluation of projector `key` (`variant`) scores on one seed.

    Ablations: the NLL only. On the first `reference_seeds` seeds (every_row): everything. On the
    later ones, what the findings pool over seeds: the NLL of every ladder row (C3, C4) and the
    caption-supervised row's VQA (C5); generated captions and the other rows' VQA are descriptive
    tables, read from the first seeds."""
    if variant != "trained":
        return ("nll",)
    if every_row:
        return limber_stages.EVAL_PARTS
    return ("nll", "vqa") if key == limber.clip_key else ("nll",)


def read_outputs(out: SeedOutputs) -> SeedOutputs:
    """Fill `out` from the folders its built stages left."""
    out.encoders = {rung: clip_stages.summary_of(path) for rung, path in out.rung_dirs.items()}
    if out.table_dir is not None:
        out.clip_table = json.loads((out.table_dir / "table.json").read_text())
    out.projector_info = {name: json.loads((path / "losses.json").read_text()) for name, path in out.projectors.items()}
    out.evals = {name: limber_stages.read_eval(path) for name, path in out.eval_dirs.items()}
    out.baselines = {**limber_stages.read_eval(out.baseline_dir), **limber_stages.read_eval(out.nll_baseline_dir)}
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
