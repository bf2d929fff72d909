"""Turn the study's stage outputs into results.json: findings, tables with intervals, sizes, encoders.

`assemble(config, outputs, timing)` reads every seed's outputs (`runner.SeedOutputs`), lines the
per-unit arrays up across conditions (the same images and questions in the same order for every
encoder), concatenates seeds (their index is the bootstrap group), and computes:

    findings      C1-C5 (`findings.py`): effect, 95 % interval, verdict, n
    encoders      per compared encoder: backbone, objective, feature_dim, train_images,
                  train_steps, language_supervision
    sizes         vqa_questions, nll_captions, generated_captions, seeds
    clip          per dataset: zero-shot and probe top-1 with intervals; shifts of the first
    likelihood    per condition: caption NLL per token overall / category / property, with intervals
    captioning    per encoder: CIDEr-D, BLEU-4, ROUGE-L, CLIP-S, RefCLIP-S (mean over seeds) and
                  category / property word recall with intervals
    vqa           per condition and shot count: open-ended and closed-set accuracy with intervals
    projectors    per projector: steps, final loss, how it started
    environment   versions and machine

Nothing here holds a path, so results.json does not depend on where the cache lives.
"""

from __future__ import annotations

import os
import platform
from dataclasses import replace
from typing import Any

import numpy as np

from vlbridge.config import to_dict
from vlbridge.study import findings as F
from vlbridge.study.config import StudyConfig

REFERENCE_DESCRIPTIONS = {  # encoder specs the study does not train -> what results.json says about them
    "efficientnet-lite0": {"backbone": "efficientnet-lite0", "objective": "ImageNet-1k classification",
                           "train_images": 1281167, "train_steps": None, "language_supervision": "labels"},
}


def _interval_dict(value: F.Interval) -> dict:
    return {"value": value.estimate, "ci95": value.as_list(), "n": value.n}


def _groups(lengths: list[int]) -> np.ndarray | None:
    if len(lengths) < 2:
        return None
    return np.concatenate([np.full(n, i) for i, n in enumerate(lengths)])


# ------------------------------------------------------------------------------------ per-unit arrays
def _leading(outputs, pick) -> list:
    """pick(out) of the leading seeds that have it: a reference row or ablation scored on the first
    `reference_seeds` seeds covers a prefix of every other row's units (the findings pair prefixes)."""
    found = []
    for out in outputs:
        value = pick(out)
        if value is None:
            break
        found.append(value)
    return found


def nll_arrays(outputs, condition: str) -> F.NLLArrays | None:
    sources = _leading(outputs, lambda out: out.baselines.get("nll", {}).get(condition) if condition in ("blind", "text")
                       else out.evals.get(condition, {}).get("nll"))
    if not sources:
        return None
    rows = [row for source in sources for row in source]
    column = lambda name: np.array([r[name] for r in rows], dtype=np.float64)  # noqa: E731
    return F.NLLArrays(column("total"), column("tokens"), column("category"), column("category_tokens"),
                       column("property"), column("property_tokens"))


def vqa_arrays(outputs, condition: str, mode: str = "open_accuracy") -> dict[str, np.ndarray] | None:
    by_shots: dict[str, list[float]] = {}
    sources = _leading(outputs, lambda out: out.baselines.get("vqa") if condition == "blind"
                       else out.evals.get(condition, {}).get("vqa"))
    if not sources:
        return None
    for source in sources:
        for shots, rows in source.items():
            by_shots.setdefault(shots, []).extend(
                float("nan") if r[mode] is None else float(r[mode]) for r in rows)
    return {shots: np.array(values) for shots, values in by_shots.items()}


def table_arrays(outputs, dataset: str) -> tuple[dict, dict] | None:
    """(zero_shot {condition: (M,)}, probes {key: {condition: (M,)}}) over seeds, or None."""
    zero: dict[str, list] = {}
    probes: dict[str, dict[str, list]] = {}
    for out in outputs:
        if not out.clip_table or dataset not in out.clip_table["datasets"]:
            return None
        entry = out.clip_table["datasets"][dataset]
        for condition, values in entry["zero_shot"].items():
            zero.setdefault(condition, []).extend(values)
        for key, by_condition in entry["probes"].items():
            for condition, values in by_condition.items():
                probes.setdefault(key, {}).setdefault(condition, []).extend(values)
    as_arrays = lambda d: {k: np.array(v, dtype=np.float64) for k, v in d.items()}  # noqa: E731
    return as_arrays(zero), {key: as_arrays(v) for key, v in probes.items()}


def _unit_counts(outputs, pick) -> list[int]:
    return [len(pick(out)) for out in outputs]


def measurements(config: StudyConfig, outputs) -> F.Measurements:
    limber = config.limber
    m = F.Measurements(clip_key=limber.clip_key, none_key=limber.no_language_key, twins=dict(limber.twins))
    if config.clip_table.datasets:
        arrays = table_arrays(outputs, config.clip_table.datasets[0])
        if arrays is not None:
            m.zero_shot, m.probes = arrays
            first = config.clip_table.datasets[0]
            m.image_groups = _groups(_unit_counts(outputs, lambda o: o.clip_table["datasets"][first]["zero_shot"]["clean"]))
    for condition in [*outputs[0].evals, "blind", "text"]:
        arrays = nll_arrays(outputs, condition)
        if arrays is not None:
            m.nll[condition] = arrays
    m.caption_groups = _groups(_unit_counts(outputs, lambda o: o.baselines["nll"]["blind"]))
    for condition in [*limber.encoders, "blind"]:
        arrays = vqa_arrays(outputs, condition)
        if arrays is not None:
            m.vqa[condition] = arrays
    first_shots = str(limber.shots[0])
    m.question_groups = _groups(_unit_counts(outputs, lambda o: o.baselines["vqa"][first_shots]))
    return m


# ------------------------------------------------------------------------------------ findings
def not_measured(claim_id: str, claim: str, why: str) -> dict:
    return {"id": claim_id, "claim": claim, "metric": "", "effect": None, "ci95": None, "verdict": "inconclusive",
            "n": 0, "note": f"not measured: {why}"}


def compute_findings(config: StudyConfig, m: F.Measurements) -> list[dict]:
    limber = config.limber
    out = []
    if m.zero_shot and config.clip_table.clip_probe in m.probes:
        table = replace(m, clip_key=config.clip_table.clip_probe)  # C1/C2 read the probe of CLIP's own features
        out.append(F.c1_zero_shot_vs_probe(table))
        shifts = [c for c in m.zero_shot if c != "clean"]
        out.append(F.c2_effective_robustness(table) if shifts and len(m.probes) >= 2 else
                   not_measured("C2", "Under distribution shift, zero-shot loses less than a probe.",
                                "needs shifts and at least two probed encoders"))
    else:
        out += [not_measured("C1", "Zero-shot CLIP is competitive with a linear probe.", "no CLIP table in this preset"),
                not_measured("C2", "Under distribution shift, zero-shot loses less than a probe.",
                             "no CLIP table in this preset")]
    twins = [t for t, twin in limber.twins.items() if t in m.nll and twin in m.nll]
    out.append(F.c3_transfer(m) if twins else not_measured("C3", "Each trained encoder beats its random-init twin.",
                                                           "no trained encoder with its twin"))
    if limber.clip_key in m.nll and limber.no_language_key in m.nll:
        out.append(F.c4_language_supervision(m, [k for k in limber.ladder if k in m.nll]))
    else:
        out.append(not_measured("C4", "More language supervision gives better transfer, above all on categories.",
                                "the ladder's caption and no-language encoders were not both scored"))
    shots = [str(s) for s in limber.shots]
    if limber.clip_key in m.vqa and "blind" in m.vqa and len(shots) >= 2:
        out.append(F.c5_vqa(m, limber.clip_key, shots[-1], shots[0]))
    else:
        out.append(not_measured("C5", "Image prefixes beat the blind baseline at VQA, and shots help.",
                                "needs the caption-supervised encoder, the blind baseline and two shot counts"))
    return out


# ------------------------------------------------------------------------------------ tables
def clip_tables(config: StudyConfig, outputs) -> dict:
    tables: dict[str, Any] = {}
    for position, dataset in enumerate(config.clip_table.datasets):
        arrays = table_arrays(outputs, dataset)
        if arrays is None:
            continue
        zero, probes = arrays
        groups = _groups(_unit_counts(outputs, lambda o: o.clip_table["datasets"][dataset]["zero_shot"]["clean"]))
        entry = outputs[0].clip_table["datasets"][dataset]
        tables[dataset] = {
            "templates": entry["templates"], "classes": entry["classes"],
            "zero_shot": {c: _interval_dict(F.mean_interval(v, groups)) for c, v in zero.items()},
            "probes": {k: {c: _interval_dict(F.mean_interval(v, groups)) for c, v in by.items()} for k, by in probes.items()},
            "probe_C": {k: [out.clip_table["datasets"][dataset]["C"][k] for out in outputs] for k in probes},
        }
    return tables


def likelihood_table(m: F.Measurements) -> dict:
    table = {}
    for condition, a in m.nll.items():
        groups = F.leading_groups(m.caption_groups, len(a.total))
        table[condition] = {
            "nll_per_token": _interval_dict(F.ratio_interval(a.total, a.tokens, groups)),
            "category": _interval_dict(F.ratio_interval(a.category, a.category_tokens, groups)),
            "property": _interval_dict(F.ratio_interval(a.property, a.property_tokens, groups)),
            "tokens": int(a.tokens.sum()), "category_tokens": int(a.category_tokens.sum()),
            "property_tokens": int(a.property_tokens.sum()),
            "seeds": F.seed_count(m.caption_groups, len(a.total)),
        }
    return table


CAPTION_METRICS = ("CIDEr-D", "BLEU-4", "ROUGE-L", "CLIP-S", "RefCLIP-S")


def captioning_table(config: StudyConfig, outputs) -> dict:
    table = {}
    for key in config.limber.encoders:
        per_set: dict[str, Any] = {}
        for name in config.limber.caption_sets:
            scores = _leading(outputs, lambda out: out.evals.get(key, {}).get("captioning", {}).get(name))
            if not scores:
                continue
            entry = {metric: _seed_mean([s.get(metric) for s in scores]) for metric in CAPTION_METRICS}
            samples = [sample for s in scores for sample in s["samples"]]
            groups = _groups([len(s["samples"]) for s in scores])
            for kind in ("category", "property"):
                hits = np.array([s[f"{kind}_recall"][0] for s in samples], dtype=np.float64)
                wanted = np.array([s[f"{kind}_recall"][1] for s in samples], dtype=np.float64)
                entry[f"{kind}_recall"] = _interval_dict(F.ratio_interval(hits, wanted, groups)) if wanted.sum() else None
            entry["n_images"] = len(samples)
            entry["seeds"] = len(scores)
            entry["by_domain"] = scores[0].get("by_domain", {})  # first seed (domain splits are for the paper sets)
            entry["clip_scorer"] = portable_name(scores[0].get("clip_scorer"))
            per_set[name] = entry
        table[key] = per_set
    return table


def portable_name(name: str | None) -> str | None:
    """A model name without the folders before its last path part ("vlbridge:/x/y/KEY@step" -> "vlbridge:KEY@step")."""
    if not name or ":" not in name:
        return name
    kind, _, where = name.partition(":")
    return f"{kind}:{where.rstrip('/').rsplit('/', 1)[-1]}"


def _seed_mean(values: list) -> float | None:
    numbers = [v for v in values if v is not None]
    return float(np.mean(numbers)) if numbers else None


def vqa_table(m: F.Measurements, outputs, config: StudyConfig) -> dict:
    table = {}
    for condition in m.vqa:
        closed = vqa_arrays(outputs, condition, "closed_accuracy") or {}
        entry = {}
        for shots, values in m.vqa[condition].items():
            groups = F.leading_groups(m.question_groups, len(values))
            row = {"open": _interval_dict(F.mean_interval(values, groups)),
                   "seeds": F.seed_count(m.question_groups, len(values))}
            if shots in closed and np.isfinite(closed[shots]).all():
                row["closed"] = _interval_dict(F.mean_interval(closed[shots], groups))
            entry[shots] = row
        table[condition] = entry
    return table


def vqa_by_type(outputs, config: StudyConfig) -> dict:
    """condition -> shots -> answer type -> open accuracy (point estimate)."""
    table: dict = {}
    for condition in [*config.limber.encoders, "blind"]:
        for out in outputs:
            source = out.baselines.get("vqa") if condition == "blind" else out.evals.get(condition, {}).get("vqa")
            for shots, rows in (source or {}).items():
                for r in rows:
                    bucket = table.setdefault(condition, {}).setdefault(shots, {}).setdefault(r["answer_type"] or "other", [])
                    bucket.append(r["open_accuracy"])
    return {c: {s: {t: float(np.mean(v)) for t, v in by.items()} for s, by in shots.items()} for c, shots in table.items()}


def encoder_table(config: StudyConfig, outputs) -> dict:
    table = {}
    for key, spec in config.limber.encoders.items():
        summary = outputs[0].encoders.get(key)
        if summary is not None:
            table[key] = {name: summary.get(name) for name in
                          ("backbone", "objective", "feature_dim", "train_images", "train_steps", "language_supervision")}
            continue
        random = spec.startswith("random:")
        base = spec.removeprefix("random:").split(":")[0]
        known = REFERENCE_DESCRIPTIONS.get(base, {"backbone": base, "objective": "pretrained (from disk)",
                                              "train_images": None, "train_steps": None,
                                              "language_supervision": "unknown"})
        entry = dict(known)
        if random:
            entry.update(objective="random init", train_images=0, train_steps=0, language_supervision="random")
        entry["feature_dim"] = _feature_dim(outputs[0], key)
        table[key] = entry
    return table


def _feature_dim(out, key: str) -> int | None:
    return out.projector_info.get(key, {}).get("feature_dim")


def sizes(config: StudyConfig, outputs, m: F.Measurements) -> dict:
    first_shots = str(config.limber.shots[0])
    questions = len(outputs[0].baselines["vqa"][first_shots])
    first_eval = next(iter(outputs[0].evals.values()), {})
    captions = sum(len(scores["samples"]) for scores in first_eval.get("captioning", {}).values())
    return {"vqa_questions": questions, "nll_captions": len(outputs[0].baselines["nll"]["blind"]),
            "generated_captions": captions, "seeds": len(outputs)}


def environment() -> dict:
    import importlib.metadata as md

    versions = {}
    for package in ("vlbridge", "torch", "transformers", "open_clip_torch", "timm", "numpy", "pycocoevalcap"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    import torch

    return {"python": platform.python_version(), "packages": versions, "machine": platform.machine(),
            "system": platform.system(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def projector_table(outputs) -> dict:
    table = {}
    for key in outputs[0].projector_info:
        infos = _leading(outputs, lambda out: out.projector_info.get(key))
        table[key] = {"steps": infos[0]["steps"], "final_loss": [i["final_loss"] for i in infos],
                      "init": infos[0].get("init", {})}
    return table


def recorded_config(config: StudyConfig) -> dict:
    data = to_dict(config)
    data["cache_dir"] = ""  # where the cache lives does not change a number
    return data


def assemble(config: StudyConfig, outputs, timing: dict[str, float], wall_s: float | None = None,
             schedule: dict | None = None) -> dict:
    """results.json from every seed's outputs; `timing`: stage -> seconds, `wall_s`: all stages'
    wall time (less than their sum when they ran side by side), `schedule`: how they ran."""
    m = measurements(config, outputs)
    return {
        "findings": compute_findings(config, m),
        "encoders": encoder_table(config, outputs),
        "sizes": sizes(config, outputs, m),
        "clip": clip_tables(config, outputs),
        "likelihood": likelihood_table(m),
        "captioning": captioning_table(config, outputs),
        "vqa": vqa_table(m, outputs, config),
        "vqa_by_answer_type": vqa_by_type(outputs, config),
        "projectors": projector_table(outputs),
        "scorer": {"independent": bool(config.scorer.independent and config.train_encoders),
                   "spec": config.limber.clip_scorer},
        "environment": {**environment(), "stages": schedule or {}},
        "timing_s": {name: round(seconds, 2) for name, seconds in timing.items()},
        "wall_s": round(wall_s if wall_s is not None else sum(timing.values()), 2),
        "config": recorded_config(config),
    }
