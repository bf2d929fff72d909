"""`field(value)`: a value made safe to print as one tab-separated field of a one-record line.

Commands that print one result a line (`caption`, `index search`) join fields with tabs; a file
name or caption holding a newline, carriage return or tab would split the record over several
lines or shift its columns. Those characters are written as the escapes \\n, \\r and \\t, so each
record stays on its line. This is a base layer: it imports nothing of vlbridge.
"""

from __future__ import annotations

_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})  # what splits a line or shifts a column


def field(value: object) -> str:
    """str(value) with line breaks and tabs escaped (see the module docstring)."""
    return str(value).translate(_ESCAPES)
