"""Sub-command modules of the `vlbridge` CLI.

Each module here defines `GROUP` (None for a top-level command, or the name of a command
group such as "train", "eval", "score", "data") and `register(subparsers)`, which adds its
parser(s) and sets `func=callable(args) -> int` on them. `vlbridge.cli` discovers the
modules automatically, so adding a command never means editing a central table.
"""
