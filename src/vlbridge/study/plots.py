"""Matplotlib figures for the study report (Agg backend, PNG files).

Each function takes plain numbers (from results.json and the run's logs), writes one PNG and
returns its path; nothing here trains or evaluates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

DPI = 110


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def training_curves(curves: dict[str, Sequence[tuple[int, float]]], path: Path, title: str) -> Path:
    """One line per run: loss against optimizer step."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, points in curves.items():
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, label=name, linewidth=1.4)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    return _save(fig, path)


def grouped_bars(groups: Sequence[str], series: dict[str, Sequence[float | None]], path: Path,
                 title: str, ylabel: str) -> Path:
    """Bars of several series side by side for each group (None = missing, drawn as no bar)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) * max(1, len(series)) / 2 + 2), 3.8))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        heights = [np.nan if v is None else v for v in values]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=name)
        for bar, value in zip(bars, values):
            if value is not None:
                ax.annotate(f"{value:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def lines_by_shots(series: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    """VQA accuracy against number of shots, one line per encoder (and the blind baseline)."""
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    every_shot = sorted({int(s) for by_shot in series.values() for s in by_shot})
    ax.set_xticks(every_shot)
    for name, by_shot in series.items():
        shots = sorted(by_shot, key=int)
        style = "--" if name == "blind" else "-"
        ax.plot([int(s) for s in shots], [100 * by_shot[s] for s in shots], style, marker="o", label=name)
    ax.set_xlabel("shots")
    ax.set_ylabel("VQA accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def intervals(labels: Sequence[str], values: Sequence[float], lows: Sequence[float], highs: Sequence[float],
              path: Path, title: str, xlabel: str, reference: float | None = None,
              colours: Sequence[str] | None = None) -> Path:
    """Point estimates with 95 % interval bars, one row per label (top to bottom), optional reference line."""
    fig, ax = plt.subplots(figsize=(6.8, 0.55 * len(labels) + 1.4))
    y = np.arange(len(labels))[::-1]
    for row, value, low, high, colour in zip(y, values, lows, highs, colours or ["C0"] * len(labels)):
        if value is None or not np.isfinite(value):
            continue
        below, above = max(0.0, value - low), max(0.0, high - value)  # a percentile interval may sit off the estimate
        ax.errorbar([value], [row], xerr=[[below], [above]], fmt="o", color=colour, capsize=4)
    if reference is not None:
        ax.axvline(reference, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def similarity_heatmap(matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
                       path: Path, title: str) -> Path:
    """Cosine-similarity matrix between images (rows) and captions (columns)."""
    size = max(4.0, 0.45 * len(col_labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(matrix, cmap="viridis")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=7)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=5, color="w")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(title)
    return _save(fig, path)


def printable(text: str) -> str:
    """`text` with control characters (which fonts cannot draw) shown as spaces."""
    return "".join(ch if ch.isprintable() else " " for ch in text)


def caption_grid(images: Sequence[Image.Image], captions: Sequence[dict[str, str]], path: Path,
                 columns: int = 4) -> Path:
    """Each sample image with every encoder's generated caption under it."""
    rows = (len(images) + columns - 1) // columns
    lines = max((len(c) for c in captions), default=1)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, (2.6 + 0.28 * lines) * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, by_encoder in zip(axes.flat, images, captions):
        ax.imshow(image)
        text = "\n".join(f"{name}: {printable(caption)[:48]}" for name, caption in by_encoder.items())
        ax.set_title(text, fontsize=6.5, loc="left")
    return _save(fig, path)
