"""ProbeConfig: how the linear probe (`vlbridge.evaluation.linear_probe`) is fitted and its C chosen.

Kept apart from `linear_probe` (which imports torch) so that `vlbridge eval probe --help` can show
the defaults without importing torch; `linear_probe` imports it from here (and it is still
importable as `vlbridge.evaluation.linear_probe.ProbeConfig`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vlbridge.errors import UserError


@dataclass
class ProbeConfig:
    """How the probe is fitted and its L2 strength chosen."""

    c_min: float = 1e-6  # smallest inverse L2 strength C searched (strongest penalty; CLIP's grid starts at 1e-6)
    c_max: float = 1e6  # largest C searched (weakest penalty; CLIP's grid ends at 1e6)
    c_steps: int = 7  # log-spaced points of the coarse sweep from c_min to c_max (default: every 2 decades, as CLIP)
    refine_per_decade: int = 8  # binary search around the best C down to this many steps per decade (CLIP: 8); 0 = coarse sweep only
    val_fraction: float = 0.2  # share of each class's train examples held out to choose C (no val split given)
    standardize: bool = False  # z-score features before fitting (False = raw features, CLIP's protocol)
    max_iter: int = 1000  # L-BFGS iterations per fit
    tolerance: float = 1e-7  # stop when max |gradient| of the mean-form loss is below this (sklearn default: 1e-4)
    seed: int = 0  # seeds the stratified train/validation split
    device: str = "cpu"  # where the fit runs ("cpu", "cuda", "cuda:1", ...)
    dtype: str = "float64"  # dtype of the final fit on train+val: "float64" (exact, default) or "float32"
    search_dtype: str = "float32"  # dtype of the fits along the C search (they only rank C values; float32 halves their time)

    def c_grid(self) -> list[float]:
        """The swept C values, ascending."""
        if self.c_min <= 0 or self.c_max < self.c_min or self.c_steps < 1:
            raise UserError(f"probe C grid needs 0 < c_min <= c_max and c_steps >= 1; got {self}")
        if self.c_steps == 1:
            return [float(self.c_min)]
        low, high = math.log10(self.c_min), math.log10(self.c_max)
        return [10 ** (low + (high - low) * i / (self.c_steps - 1)) for i in range(self.c_steps)]

    def refine_steps(self) -> list[float]:
        """The log10 steps of the binary search after the coarse sweep: halving until <= 1/refine_per_decade."""
        if self.refine_per_decade < 0:
            raise UserError(f"refine_per_decade must be >= 0, got {self.refine_per_decade}")
        if self.refine_per_decade == 0 or len(self.c_grid()) < 2:
            return []
        step, finest, steps = (math.log10(self.c_max) - math.log10(self.c_min)) / (self.c_steps - 1), 1 / self.refine_per_decade, []
        while step > finest * (1 + 1e-9):
            step /= 2
            steps.append(step)
        return steps
