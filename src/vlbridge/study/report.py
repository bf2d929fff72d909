"""Write the study's report: `results.json`, `report.md` and a standalone `report.html`.

Input is the results dict (schema in docs/STUDY.md) plus `ReportExtras` holding what is
looked at rather than read: training curves, sample images with each encoder's caption, and
an image–caption similarity matrix. Plots are PNGs under `plots/`; the HTML embeds them as
base64 so the one file can be mailed around.
"""

from __future__ import annotations

import base64
import html
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from vlbridge.study import plots


@dataclass
class ReportExtras:
    """Visual material for the report (all optional)."""

    clip_curve: list[tuple[int, float]] = field(default_factory=list)  # CLIP (step, loss)
    limber_curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # encoder -> (step, loss)
    sample_images: list[Image.Image] = field(default_factory=list)  # held-out images shown in the grid
    sample_captions: list[dict[str, str]] = field(default_factory=list)  # per image: encoder -> caption
    similarity: np.ndarray | None = None  # (images, captions) cosine similarities from the trained CLIP
    similarity_rows: list[str] = field(default_factory=list)  # row labels (image ids)
    similarity_cols: list[str] = field(default_factory=list)  # column labels (captions)


def fmt(value: Any, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    if isinstance(value, (int, float)):
        return f"{100 * value:.1f}" if percent else f"{value:.3f}"
    return str(value)


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def clip_rows(clip: dict) -> tuple[list[str], list[list[str]]]:
    """Zero-shot vs linear-probe table (accuracies in %)."""
    header = ["dataset", "templates", "zero-shot top-1", "zero-shot top-5", "mean per-class recall"]
    probe_names: list[str] = []
    for entry in clip.get("linear_probe", {}).values():
        for name in entry.get("by_features", {}):
            if name not in probe_names:
                probe_names.append(name)
    header += [f"probe top-1 ({name})" for name in probe_names]
    rows = []
    datasets = list(dict.fromkeys([*clip.get("zero_shot", {}), *clip.get("linear_probe", {})]))
    for dataset in datasets:
        zs = clip.get("zero_shot", {}).get(dataset, {})
        probe = clip.get("linear_probe", {}).get(dataset, {}).get("by_features", {})
        rows.append([dataset, clip.get("templates", {}).get(dataset, "-"), fmt(zs.get("top1"), True), fmt(zs.get("top5"), True),
                     fmt(zs.get("mean_per_class_recall"), True), *[fmt(probe.get(n), True) for n in probe_names]])
    return header, rows


def robustness_rows(robustness: dict) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "zero-shot", "zero-shot drop", "probe", "probe drop"]
    rows = [[name, fmt(r.get("zero_shot"), True), fmt(r.get("zero_shot_drop"), True),
             fmt(r.get("probe"), True), fmt(r.get("probe_drop"), True)] for name, r in robustness.items()]
    return header, rows


def caption_rows(captioning: dict) -> tuple[list[str], list[list[str]]]:
    domains: list[str] = []
    for entry in captioning.values():
        for domain in entry.get("by_domain", {}):
            if domain not in domains:
                domains.append(domain)
    header = ["encoder", "CIDEr-D", "CLIP-S", "RefCLIP-S", *[f"CIDEr-D {d}" for d in domains]]
    rows = []
    for encoder, entry in captioning.items():
        by_domain = entry.get("by_domain", {})
        rows.append([encoder, fmt(entry.get("CIDEr-D")), fmt(entry.get("CLIP-S")), fmt(entry.get("RefCLIP-S")),
                     *[fmt(by_domain.get(d, {}).get("CIDEr-D")) for d in domains]])
    return header, rows


def vqa_rows(vqa: dict) -> tuple[list[str], list[list[str]]]:
    shots = sorted({s for entry in vqa.values() for s in entry if s.isdigit()}, key=int)
    header = ["encoder", *[f"{s}-shot" for s in shots]]
    rows = [[encoder, *[fmt(entry.get(s), True) for s in shots]] for encoder, entry in vqa.items()]
    return header, rows


def make_plots(results: dict, extras: ReportExtras, folder: Path) -> dict[str, Path]:
    """All figures the data allows; returns title -> PNG path."""
    figures: dict[str, Path] = {}
    curves = {"CLIP": extras.clip_curve} if extras.clip_curve else {}
    if curves:
        figures["CLIP training loss"] = plots.training_curves(curves, folder / "clip_loss.png", "CLIP training loss")
    if extras.limber_curves:
        figures["LiMBeR projector training loss"] = plots.training_curves(
            extras.limber_curves, folder / "limber_loss.png", "LiMBeR projector training loss (caption CE)")
    header, rows = clip_rows(results.get("clip", {}))
    if rows:
        series = {h: [None if r[i] == "—" else float(r[i]) for r in rows] for i, h in enumerate(header)
                  if i > 0 and ("top-1" in h)}
        figures["Zero-shot vs linear probe"] = plots.grouped_bars(
            [r[0] for r in rows], series, folder / "zeroshot_vs_probe.png", "Zero-shot vs linear probe", "top-1 (%)")
    captioning = results.get("captioning", {})
    if captioning:
        metrics = ["CIDEr-D", "CLIP-S", "RefCLIP-S"]
        series = {enc: [captioning[enc].get(m) for m in metrics] for enc in captioning}
        figures["Caption metrics by encoder"] = plots.grouped_bars(
            metrics, series, folder / "caption_metrics.png", "Caption metrics by encoder", "score")
    if results.get("vqa"):
        figures["VQA accuracy by shots"] = plots.lines_by_shots(results["vqa"], folder / "vqa_shots.png",
                                                                "VQA accuracy by number of shots")
    if extras.sample_images:
        figures["Sample captions"] = plots.caption_grid(extras.sample_images, extras.sample_captions,
                                                       folder / "sample_captions.png")
    if extras.similarity is not None:
        figures["CLIP image–caption similarity"] = plots.similarity_heatmap(
            extras.similarity, extras.similarity_rows, extras.similarity_cols, folder / "similarity.png",
            "CLIP cosine similarity (held-out images × captions)")
    return figures


def sections(results: dict) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, header, rows, note) for every table the results hold."""
    out = []
    clip = results.get("clip", {})
    header, rows = clip_rows(clip)
    if rows:
        out.append(("CLIP: zero-shot vs linear probe (accuracy, %)", header, rows,
                    "Zero-shot uses no labelled examples; probes are L2-regularised logistic regression on frozen features."))
    if clip.get("robustness"):
        header, rows = robustness_rows(clip["robustness"])
        out.append(("CLIP: robustness under distribution shift (accuracy, %)", header, rows,
                    "Drop = clean accuracy − shifted accuracy on the same scenes."))
    if results.get("captioning"):
        header, rows = caption_rows(results["captioning"])
        out.append(("LiMBeR: captioning", header, rows,
                    "CIDEr-D on the ×10 scale of the COCO tools; document frequency computed within each domain "
                    "(NoCaps convention). CLIP-S/RefCLIP-S use the scorer named in results.json."))
    if results.get("vqa"):
        header, rows = vqa_rows(results["vqa"])
        template = results.get("config", {}).get("limber", {}).get("vqa_template")
        wording = f" Each shot and the question are worded \"{template}\"." if template else ""
        out.append(("LiMBeR: few-shot VQA accuracy (%)", header, rows,
                    "Official VQA accuracy; 'blind' runs the same prompts with no image tokens." + wording))
    if results.get("timing_s"):
        rows = [[stage, f"{seconds:.1f}"] for stage, seconds in results["timing_s"].items()]
        out.append(("Time per stage (s)", ["stage", "seconds"], rows, ""))
    return out


def write_report(results: dict, out_dir: str | Path, extras: ReportExtras | None = None) -> dict[str, Path]:
    """Write results.json, report.md, report.html (+ plots/) into out_dir; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extras = extras or ReportExtras()
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    figures = make_plots(results, extras, out_dir / "plots")
    tables = sections(results)
    machine = f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}"
    md = [f"# vlbridge study report ({results.get('config', {}).get('preset', 'default')} preset)", "",
          f"Machine: {machine}", ""]
    for title, header, rows, note in tables:
        md += [f"## {title}", "", md_table(header, rows), ""] + ([note, ""] if note else [])
    md += ["## Figures", ""] + [f"![{title}](plots/{path.name})\n" for title, path in figures.items()]
    (out_dir / "report.md").write_text("\n".join(md))
    (out_dir / "report.html").write_text(render_html(results, tables, figures, machine))
    return {"results": out_dir / "results.json", "markdown": out_dir / "report.md", "html": out_dir / "report.html"}


def render_html(results: dict, tables, figures: dict[str, Path], machine: str) -> str:
    """A single self-contained HTML page: tables and base64-embedded figures."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>vlbridge study report</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
             "img{max-width:100%;border:1px solid #eee}.note{color:#555;font-size:90%}</style></head><body>",
             f"<h1>vlbridge study report ({html.escape(str(results.get('config', {}).get('preset', 'default')))} preset)</h1>",
             f"<p class='note'>Machine: {html.escape(machine)}</p>"]
    for title, header, rows, note in tables:
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>" + (f"<p class='note'>{html.escape(note)}</p>" if note else ""))
    for title, path in figures.items():
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
