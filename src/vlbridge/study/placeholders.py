"""Placeholders in the study's spec templates, filled once the folders they name exist.

    {tower:RUNG}   the supervision ladder's image tower of RUNG (random, self-supervised, labels, clip)
    {clip}         the ladder's CLIP run (both towers: what zero-shot classification loads)
    {scorer}       the CLIP that scores generated captions (an independent one, or {clip})
    {paper.FIELD}  a local path of `PaperPaths` (the paper preset)

`fill(template, folders, paper)` replaces every placeholder it knows and refuses, with one line,
a template whose placeholder has no folder (e.g. {tower:labels} when that rung is not built).
"""

from __future__ import annotations

import re
from pathlib import Path

from vlbridge.errors import UserError

PLACEHOLDER = re.compile(r"\{(tower:[a-z-]+|clip|scorer|paper\.[a-z0-9_]+)\}")


def fill(template: str, folders: dict[str, Path | str], paper=None) -> str:
    """`template` with {tower:R}, {clip}, {scorer} from `folders` and {paper.X} from `paper` filled in."""
    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name.startswith("paper."):
            field = name[len("paper."):]
            if paper is None or not hasattr(paper, field):
                raise UserError(f"{template!r}: unknown paper path {{{name}}}")
            return str(getattr(paper, field))
        if name not in folders:
            raise UserError(f"{template!r} needs {{{name}}}, which this study does not build "
                            f"(built: {', '.join(sorted(folders)) or 'nothing'})")
        return str(folders[name])

    return PLACEHOLDER.sub(replace, template)


def needs(template: str) -> set[str]:
    """The placeholders (without braces) that `template` uses."""
    return set(PLACEHOLDER.findall(template))
