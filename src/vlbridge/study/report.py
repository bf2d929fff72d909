"""Write the study's report: `results.json`, `report.md` and a standalone `report.html`.

The report opens with the Findings: each claim, its measured effect with a 95 % interval, the
verdict and a sentence a reader can take away without the rest of the page. Then the tables the
findings come from (every number with its interval and sample size), the encoders compared,
sizes, per-stage time and the machine. `ReportExtras` holds what is looked at rather than read:
training curves, sample images with each encoder's caption, a similarity matrix. Plots are PNGs
under `plots/`; the HTML embeds them as base64 so the one file can be mailed around.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from vlbridge.io import atomic_write_text
from vlbridge.study import plots

ACCURACY_CLAIMS = ("C1", "C2", "C5")  # effects in accuracy (shown as points); C3 / C4 are in nats per token
VERDICT_WORDS = {
    "reproduced": "the whole 95 % interval lies on the claim's side",
    "contradicted": "the whole 95 % interval lies against the claim",
    "inconclusive": "the 95 % interval includes the threshold: this run cannot tell",
}


@dataclass
class ReportExtras:
    """Visual material for the report (all optional)."""

    ladder_curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # rung -> (step, loss)
    limber_curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # projector -> (step, loss)
    sample_images: list[Image.Image] = field(default_factory=list)  # held-out images shown in the grid
    sample_captions: list[dict[str, str]] = field(default_factory=list)  # per image: encoder -> caption
    similarity: np.ndarray | None = None  # (images, captions) cosine similarities from the trained CLIP
    similarity_rows: list[str] = field(default_factory=list)  # row labels (image ids)
    similarity_cols: list[str] = field(default_factory=list)  # column labels (captions)


# ------------------------------------------------------------------------------------ formatting
def fmt(value: Any, percent: bool = False, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)) and not percent:
        return str(int(value))
    if isinstance(value, (int, float)):
        return f"{100 * value:.1f}" if percent else f"{value:.{digits}f}"
    return str(value)


def fmt_ci(entry: dict | None, percent: bool = False, digits: int = 3) -> str:
    """"value [low, high]" of an {"value", "ci95"} entry."""
    if not entry or entry.get("value") is None:
        return "—"
    low, high = entry["ci95"]
    return f"{fmt(entry['value'], percent, digits)} [{fmt(low, percent, digits)}, {fmt(high, percent, digits)}]"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def effect_text(finding: dict) -> str:
    if finding.get("effect") is None:
        return finding.get("note", "not measured")
    percent = finding["id"] in ACCURACY_CLAIMS
    unit = " points" if percent else " nats/token"
    low, high = finding["ci95"]
    return (f"{fmt(finding['effect'], percent)}{unit} (95 % CI {fmt(low, percent)} to {fmt(high, percent)}; "
            f"n = {finding['n']})")


def finding_sentence(finding: dict) -> str:
    """One plain-language line per claim."""
    if finding.get("effect") is None:
        return f"{finding['id']} was not measured here ({finding.get('note', '')})."
    return f"{finding['id']}: {finding['verdict']} — {VERDICT_WORDS[finding['verdict']]}. {finding['claim']}"


# ------------------------------------------------------------------------------------ tables
def findings_rows(findings: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["claim", "verdict", "effect (95 % CI, n)", "what was measured"]
    rows = [[f"{f['id']}: {f['claim']}", f["verdict"], effect_text(f), f.get("metric") or f.get("note", "")]
            for f in findings]
    return header, rows


def parts_rows(findings: list[dict]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for f in findings:
        percent = f["id"] in ACCURACY_CLAIMS
        for part in f.get("parts", []):
            entry = {"value": part["effect"], "ci95": part["ci95"]}
            rows.append([f["id"], part["name"], fmt_ci(entry, percent), fmt(part["threshold"], percent), part["verdict"]])
    return ["claim", "part", "effect [95 % CI]", "threshold", "verdict"], rows


def encoder_rows(encoders: dict) -> tuple[list[str], list[list[str]]]:
    header = ["encoder", "backbone", "objective", "language supervision", "feature dim", "train images", "train steps"]
    rows = [[key, str(e.get("backbone")), str(e.get("objective")), str(e.get("language_supervision")),
             fmt(e.get("feature_dim")), fmt(e.get("train_images")), fmt(e.get("train_steps"))]
            for key, e in encoders.items()]
    return header, rows


def seeded_label(key: str, seeds: int | None, most: int) -> str:
    """A row's name, saying so when it was scored on fewer of the study's `most` seeds (limber.reference_seeds)."""
    if seeds is None or seeds >= most:
        return key
    return f"{key} (first seed only)" if seeds == 1 else f"{key} (first {seeds} seeds)"


def likelihood_rows(likelihood: dict, seeds: int = 1) -> tuple[list[str], list[list[str]]]:
    header = ["condition", "NLL / token [95 % CI]", "category words", "property words", "tokens"]
    order = sorted(likelihood, key=lambda k: likelihood[k]["nll_per_token"]["value"])
    rows = [[seeded_label(k, likelihood[k].get("seeds"), seeds), fmt_ci(likelihood[k]["nll_per_token"]),
             fmt_ci(likelihood[k]["category"]), fmt_ci(likelihood[k]["property"]), str(likelihood[k]["tokens"])]
            for k in order]
    return header, rows


def clip_rows(clip: dict) -> tuple[list[str], list[list[str]]]:
    probes = list(dict.fromkeys(k for entry in clip.values() for k in entry["probes"]))
    header = ["dataset", "condition", "zero-shot top-1 %", *[f"probe ({k}) %" for k in probes]]
    rows = []
    for dataset, entry in clip.items():
        for condition, zero in entry["zero_shot"].items():
            rows.append([dataset, condition, fmt_ci(zero, True),
                         *[fmt_ci(entry["probes"].get(k, {}).get(condition), True) for k in probes]])
    return header, rows


def caption_rows(captioning: dict, seeds: int = 1) -> tuple[list[str], list[list[str]]]:
    header = ["encoder", "set", "CIDEr-D", "CLIP-S", "RefCLIP-S", "category recall %", "property recall %", "images"]
    rows = []
    for key, sets in captioning.items():
        for name, e in sets.items():
            rows.append([seeded_label(key, e.get("seeds"), seeds), name, fmt(e.get("CIDEr-D")), fmt(e.get("CLIP-S")),
                         fmt(e.get("RefCLIP-S")),
                         fmt_ci(e.get("category_recall"), True), fmt_ci(e.get("property_recall"), True),
                         str(e.get("n_images"))])
    return header, rows


def vqa_rows(vqa: dict, mode: str, seeds: int = 1) -> tuple[list[str], list[list[str]]]:
    shots = sorted({s for entry in vqa.values() for s in entry}, key=int)
    header = ["condition", *[f"{s}-shot" for s in shots]]
    covered = {key: max((row.get("seeds", 1) for row in entry.values()), default=1) for key, entry in vqa.items()}
    rows = [[seeded_label(key, covered[key], seeds), *[fmt_ci(entry.get(s, {}).get(mode), True) for s in shots]]
            for key, entry in vqa.items() if any(mode in entry.get(s, {}) for s in shots)]
    return header, rows


def by_type_rows(by_type: dict) -> tuple[list[str], list[list[str]]]:
    types = sorted({t for shots in by_type.values() for per in shots.values() for t in per})
    header = ["condition", "shots", *types]
    rows = []
    for key, shots in by_type.items():
        for s in sorted(shots, key=int):
            rows.append([key, s, *[fmt(shots[s].get(t), True) for t in types]])
    return header, rows


def projector_rows(projectors: dict) -> tuple[list[str], list[list[str]]]:
    header = ["projector", "init", "ridge chosen", "steps", "final train loss (per seed)"]
    rows = [[k, str(p["init"].get("init", "—")), fmt(p["init"].get("ridge"), digits=4), str(p["steps"]),
             ", ".join(fmt(v) for v in p["final_loss"])] for k, p in projectors.items()]
    return header, rows


SCORER_CAVEAT = ("The CLIP-S / RefCLIP-S scorer is the ladder's own CLIP: it is one of the compared encoders, so "
                 "these two columns favour the clip row. The default preset cannot afford a second CLIP; "
                 "`--preset full` trains an independent one (scorer.independent).")


def sections(results: dict) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, header, rows, note) for every table the results hold, in reading order."""
    out = []
    seeds = results.get("sizes", {}).get("seeds", 1)  # rows scored on fewer of them say so
    if results.get("findings"):
        out.append(("Findings", *findings_rows(results["findings"]),
                    "Effects and intervals are paired bootstraps over images or questions (two-stage over seeds when "
                    "there are several); a verdict is computed from the interval, never typed in."))
        header, rows = parts_rows(results["findings"])
        if rows:
            out.append(("Findings, part by part", header, rows, ""))
    if results.get("encoders"):
        out.append(("Encoders compared", *encoder_rows(results["encoders"]),
                    "The ladder shares one backbone, its initial weights, training images, steps, batch and "
                    "augmentations; each rung's features are read at the same layer with the same width."))
    if results.get("likelihood"):
        out.append(("Caption likelihood (primary captioning endpoint)", *likelihood_rows(results["likelihood"], seeds),
                    "Mean negative log-likelihood per caption token (nats; lower is better) of held-out reference "
                    "captions given the image prefix. blind = no image (floor); text = another reference caption "
                    "given as text (ceiling)."))
    if results.get("clip"):
        out.append(("CLIP: zero-shot vs linear probes (top-1, %, 95 % CI)", *clip_rows(results["clip"]),
                    "Zero-shot uses no labelled examples; probes are L2-regularised logistic regression on frozen "
                    "features (C chosen on a held-out part of the training images). Shifted rows re-render the same "
                    "test scenes."))
    if results.get("captioning"):
        scorer = results.get("scorer", {})
        note = "CIDEr-D on the ×10 scale of the COCO tools. Word recall: share of the category / property words " \
               "said by at least half the references that the caption says."
        if not scorer.get("independent"):
            note += " " + SCORER_CAVEAT
        out.append(("Generated captions", *caption_rows(results["captioning"], seeds), note))
    if results.get("vqa"):
        template = results.get("config", {}).get("limber", {}).get("vqa_template")
        out.append(("Few-shot VQA, open-ended (official accuracy, %, 95 % CI)", *vqa_rows(results["vqa"], "open", seeds),
                    f"Greedy answers, first line. Every condition answers the same questions; blind removes the image "
                    f"tokens. Prompt wording: \"{template}\"."))
        header, rows = vqa_rows(results["vqa"], "closed", seeds)
        if rows:
            out.append(("Few-shot VQA, closed set (ranked by likelihood, %, 95 % CI)", header, rows,
                        "The answer of highest likelihood among the answer type's vocabulary."))
    if results.get("vqa_by_answer_type"):
        out.append(("VQA by answer type (open-ended, %)", *by_type_rows(results["vqa_by_answer_type"]), ""))
    if results.get("projectors"):
        out.append(("Projectors", *projector_rows(results["projectors"]),
                    "clip:closed-form = the closed-form start only; clip:plain = nn.Linear init + the same gradient "
                    "steps: the ablation rows of the likelihood table show what the gradient steps add."))
    if results.get("sizes"):
        sizes = results["sizes"]
        out.append(("Sizes", list(sizes), [[str(v) for v in sizes.values()]], ""))
    if results.get("timing_s"):
        rows = [[stage, f"{seconds:.1f}"] for stage, seconds in results["timing_s"].items()]
        rows.append(["sum of the stages", f"{sum(results['timing_s'].values()):.1f}"])
        note = ""
        if results.get("wall_s") is not None:
            rows.append(["wall time of all stages", f"{results['wall_s']:.1f}"])
            stages = results.get("environment", {}).get("stages", {})
            if stages.get("workers", 1) > 1:
                note = (f"{stages['workers']} stages ran side by side ({stages.get('threads_per_worker')} torch "
                        "thread(s) each), so the stage times overlap and their sum exceeds the wall time.")
        out.append(("Time per stage (s)", ["stage", "seconds"], rows, note))
    return out


# ------------------------------------------------------------------------------------ figures
def make_plots(results: dict, extras: ReportExtras, folder: Path) -> dict[str, Path]:
    """All figures the data allows; returns title -> PNG path."""
    figures: dict[str, Path] = {}
    measured = [f for f in results.get("findings", []) if f.get("effect") is not None]
    colours = {"reproduced": "tab:green", "contradicted": "tab:red", "inconclusive": "tab:orange"}
    for unit, claims, scale, name in (("accuracy points", ACCURACY_CLAIMS, 100, "findings_points.png"),
                                      ("nats per token", ("C3", "C4"), 1, "findings_nats.png")):
        rows = [(f"{f['id']}: {p['name']}", p) for f in measured if f["id"] in claims for p in f.get("parts", [])]
        if rows:
            figures[f"Findings in {unit}"] = plots.intervals(
                [r[0] for r in rows], [r[1]["effect"] * scale for r in rows], [r[1]["ci95"][0] * scale for r in rows],
                [r[1]["ci95"][1] * scale for r in rows], folder / name,
                "Effects with 95 % intervals (green: reproduced, orange: inconclusive, red: contradicted)",
                f"{unit}; > 0 supports the claim (C1: > -5)", 0.0, [colours[r[1]["verdict"]] for r in rows])
    likelihood = results.get("likelihood", {})
    if likelihood:
        order = sorted(likelihood, key=lambda k: likelihood[k]["nll_per_token"]["value"])
        figures["Caption NLL per token"] = plots.intervals(
            order, [likelihood[k]["nll_per_token"]["value"] for k in order],
            [likelihood[k]["nll_per_token"]["ci95"][0] for k in order],
            [likelihood[k]["nll_per_token"]["ci95"][1] for k in order], folder / "likelihood.png",
            "Held-out caption NLL per token (lower is better)", "nats per token")
    if extras.ladder_curves:
        figures["Supervision ladder training loss"] = plots.training_curves(
            extras.ladder_curves, folder / "ladder_loss.png", "Ladder training loss (each rung's own objective)")
    if extras.limber_curves:
        figures["LiMBeR projector training loss"] = plots.training_curves(
            extras.limber_curves, folder / "limber_loss.png", "Projector training loss (caption cross-entropy)")
    if results.get("vqa"):
        series = {k: {s: v["open"]["value"] for s, v in entry.items()} for k, entry in results["vqa"].items()}
        figures["VQA accuracy by shots"] = plots.lines_by_shots(series, folder / "vqa_shots.png",
                                                                "Open-ended VQA accuracy by number of shots")
    if extras.sample_images:
        figures["Sample captions"] = plots.caption_grid(extras.sample_images, extras.sample_captions,
                                                       folder / "sample_captions.png")
    if extras.similarity is not None:
        figures["CLIP image–caption similarity"] = plots.similarity_heatmap(
            extras.similarity, extras.similarity_rows, extras.similarity_cols, folder / "similarity.png",
            "CLIP cosine similarity (held-out images × captions)")
    return figures


# ------------------------------------------------------------------------------------ writing
def machine_line(results: dict) -> str:
    env = results.get("environment", {})
    packages = env.get("packages", {})
    stages = env.get("stages") or {}
    threads = (f"stages {stages['workers']} at a time on {stages['threads_per_worker']} torch thread(s) each"
               if stages.get("workers", 1) > 1 else f"{env.get('torch_threads', '?')} torch threads")
    return (f"{env.get('machine', '?')} {env.get('system', '')}, {env.get('cpu_count', '?')} CPUs, "
            f"{threads}, GPU: {env.get('cuda') or 'none'}; Python "
            f"{env.get('python', '?')}, torch {packages.get('torch', '?')}, vlbridge {packages.get('vlbridge', '?')}")


def write_report(results: dict, out_dir: str | Path, extras: ReportExtras | None = None) -> dict[str, Path]:
    """Write results.json, report.md, report.html (+ plots/) into out_dir; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extras = extras or ReportExtras()
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    figures = make_plots(results, extras, out_dir / "plots")
    tables = sections(results)
    preset = results.get("config", {}).get("preset", "default")
    summary = [finding_sentence(f) for f in results.get("findings", [])]
    md = [f"# vlbridge study report ({preset} preset)", "", f"Machine: {machine_line(results)}", ""]
    if summary:
        md += ["In one paragraph: " + " ".join(summary), ""]
    for title, header, rows, note in tables:
        md += [f"## {title}", "", md_table(header, rows), ""] + ([note, ""] if note else [])
    md += ["## Figures", ""] + [f"![{title}](plots/{path.name})\n" for title, path in figures.items()]
    atomic_write_text(out_dir / "report.md", "\n".join(md))
    atomic_write_text(out_dir / "report.html", render_html(preset, summary, tables, figures, machine_line(results)))
    return {"results": out_dir / "results.json", "markdown": out_dir / "report.md", "html": out_dir / "report.html"}


def render_html(preset: str, summary: list[str], tables, figures: dict[str, Path], machine: str) -> str:
    """A single self-contained HTML page: findings, tables and base64-embedded figures."""
    verdict_style = "".join(f".v-{v}{{font-weight:600;color:{c}}}" for v, c in
                            (("reproduced", "#1a7f37"), ("contradicted", "#cf222e"), ("inconclusive", "#9a6700")))
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>vlbridge study report</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:left;vertical-align:top}td.num{text-align:right;white-space:nowrap}th{background:#f3f3f3}"
             "img{max-width:100%;border:1px solid #eee}.note{color:#555;font-size:90%}"
             f"ul.summary li{{margin:.3em 0}}{verdict_style}</style></head><body>",
             f"<h1>vlbridge study report ({html.escape(str(preset))} preset)</h1>",
             f"<p class='note'>Machine: {html.escape(machine)}</p>"]
    if summary:
        parts.append("<ul class='summary'>" + "".join(f"<li>{_verdict_html(s)}</li>" for s in summary) + "</ul>")
    for title, header, rows, note in tables:
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows]
        parts.append("</table>" + (f"<p class='note'>{html.escape(note)}</p>" if note else ""))
    for title, path in figures.items():
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


NUMERIC = re.compile(r"^[-+]?(\d|—)")  # cells that start with a number (or the missing-value dash)


def _cell(text: str) -> str:
    """One table cell: verdicts coloured, numbers right-aligned, words left-aligned."""
    if text in VERDICT_WORDS:
        return f"<td>{_verdict_html(text)}</td>"
    css = " class='num'" if NUMERIC.match(text) else ""
    return f"<td{css}>{html.escape(text)}</td>"


def _verdict_html(text: str) -> str:
    escaped = html.escape(text)
    for verdict in VERDICT_WORDS:
        escaped = escaped.replace(verdict, f"<span class='v-{verdict}'>{verdict}</span>", 1)
    return escaped
