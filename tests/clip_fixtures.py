"""Moved to tests/helpers/clip_fixtures.py; this re-export stays only until test_tower_train.py imports
`from helpers.clip_fixtures import run_processes` (then delete this file)."""

from helpers.clip_fixtures import run_processes  # noqa: F401
