"""`RunLogger`: training metrics to `run_dir/metrics.csv` and TensorBoard, from rank 0 only.

Used by CLIP and LiMBeR training alike:

    logger = RunLogger(run_dir, is_main=env.is_main, resume_step=start_step)
    logger.log(step, {"loss": 2.1, "lr": 3e-4})
    logger.close()

metrics.csv has one row per `log` call: `step`, then every metric name in order of first
appearance (a new name rewrites the file with the wider header; missing values are empty).
When a run resumes at step k (k = 0 for a fresh start, also after a kill before the first
checkpoint), rows logged after k by the interrupted run are dropped, and so is a row a kill
tore mid-write, so the file reads like one uninterrupted run; TensorBoard events after k are purged the same way.
On ranks other than 0 every method is a no-op.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

from vlbridge.io import atomic_open, write_errors_as_user_errors

log = logging.getLogger(__name__)

CSV_NAME = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"


class RunLogger:
    """Appends metric rows to metrics.csv and scalars to TensorBoard (rank 0 only)."""

    def __init__(self, run_dir: str | Path, is_main: bool = True, resume_step: int | None = None, tensorboard: bool = True):
        self.is_main = is_main  # only the main rank writes
        self.path = Path(run_dir) / CSV_NAME  # the CSV file
        self.columns: list[str] = ["step"]  # header, in order of first appearance
        self.rows: list[dict[str, str]] = []  # everything written so far (rewritten when columns grow)
        self.writer = None  # TensorBoard SummaryWriter, opened lazily
        if not is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._read_existing(resume_step)
        if tensorboard:
            self.writer = _summary_writer(self.path.parent / TENSORBOARD_DIR, resume_step)

    def _read_existing(self, resume_step: int | None) -> None:
        if not self.path.is_file():
            return
        text = self.path.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines.pop()  # a row a kill cut short ("1" of "10,..."): it could pass for another step's row
        reader = csv.DictReader(lines)
        self.columns = list(reader.fieldnames or ["step"])
        self.rows = [row for row in reader if _kept(row, resume_step)]
        self._rewrite()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Write one row (and one TensorBoard scalar per metric) at `step`."""
        if not self.is_main:
            return
        row = {"step": str(step), **{name: _format(value) for name, value in metrics.items()}}
        new_columns = [name for name in metrics if name not in self.columns]
        self.rows.append(row)
        if new_columns or not self.path.is_file():
            self.columns += new_columns
            self._rewrite()
        else:
            with write_errors_as_user_errors(self.path), self.path.open("a", newline="", encoding="utf-8") as handle:
                csv.DictWriter(handle, self.columns).writerow(row)
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(name, float(value), step)

    def _rewrite(self) -> None:
        with atomic_open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _kept(row: dict[str, str], resume_step: int | None) -> bool:
    """A row survives a resume at `resume_step` if it was logged at or before it (a row torn by a kill has no valid step)."""
    step = (row.get("step") or "").strip()
    if not step.isdigit():
        return False
    return resume_step is None or int(step) <= resume_step


def _format(value: float) -> str:
    value = float(value)
    return repr(value) if math.isfinite(value) else str(value)


def _summary_writer(folder: Path, resume_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # tensorboard is a declared dependency; keep CSV logging if it breaks
        log.warning("TensorBoard logging off (%s)", err)
        return None
    return SummaryWriter(str(folder), purge_step=None if resume_step is None else resume_step + 1)
