"""Seeded selections of records: `n` of them, and a stratified train / held-out split.

    seeded_subset(records, n, seed)            n records by a seeded permutation, stored order kept
    stratified_split(labels, fraction, seed)   per class, a seeded `fraction` goes to the second part

Both are pure functions of their arguments (torch's CPU generator, seeded per call), so every
machine draws the same records. A subset is never "the first n": datasets stored class by
class keep their class balance.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vlbridge.errors import UserError
from vlbridge.validate import MAX_COUNT


def check_count(name: str, value) -> int:
    """`value` as a record count from 1 to MAX_COUNT, else the one UserError every n= / first= / --n gives."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} is a number of records and must be a whole number >= 1, got {value!r}")
    if value > MAX_COUNT:
        raise UserError(f"{name} is a number of records and must be at most {MAX_COUNT:,}, got {value:,}")
    return value


def seeded_subset(records: Sequence, n: int | None, seed: int) -> list:
    """`n` records chosen by a seeded permutation, in their original order (all when n is None or >= len)."""
    if n is None:
        return list(records)
    check_count("n", n)
    if n >= len(records):
        return list(records)
    chosen = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed))[:n]
    return [records[i] for i in sorted(chosen.tolist())]


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices): per class, a seeded `val_fraction` goes to val (>= 1 left in train)."""
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels).cpu()
    train_parts, val_parts = [], []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_val = min(len(members) - 1, max(1, round(val_fraction * len(members))))
        val_parts.append(members[:n_val])
        train_parts.append(members[n_val:])
    val_indices = torch.cat(val_parts).sort().values
    if len(val_indices) == 0:
        raise UserError("choosing the probe's C needs a validation split, but every class has a single example")
    return torch.cat(train_parts).sort().values, val_indices
