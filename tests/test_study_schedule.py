"""Side-by-side stages (study/schedule.py): order, concurrency, thread count, caching and failures,
with real forked processes on tiny builds that write marker files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from vlbridge.errors import UserError
from vlbridge.study.cache import DONE, StageCache
from vlbridge.study.schedule import Stage, StageFailed, check_plan, priorities, run_side_by_side


def _writer(name: str, log: Path, reads: tuple[Path, ...] = (), wait_for: Path | None = None):
    """A build that checks its inputs are installed, optionally waits for a file, records itself."""
    def build(folder: Path) -> None:
        import torch

        for path in reads:
            assert (path / DONE).is_file(), f"{name} started before {path} was built"
        started = time.time()
        if wait_for is not None:
            deadline = time.time() + 20
            while not wait_for.exists():
                assert time.time() < deadline, f"{name}: {wait_for} never appeared (stages did not run side by side)"
                time.sleep(0.02)
        (folder / "out.json").write_text(json.dumps({"name": name, "pid": os.getpid(), "threads": torch.get_num_threads(),
                                                     "started": started}))
        with open(log, "a") as handle:
            handle.write(name + "\n")
    return build


def test_every_stage_builds_after_its_inputs_two_at_a_time_with_the_asked_threads(tmp_path):
    cache, log = StageCache(tmp_path / "cache"), tmp_path / "log"
    flag = tmp_path / "a-started"

    def first(folder: Path) -> None:  # waits until "b" runs: only possible when both run at once
        flag.write_text("")
        _writer("a", log, wait_for=tmp_path / "b-running")(folder)

    def second(folder: Path) -> None:
        (tmp_path / "b-running").write_text("")
        _writer("b", log, wait_for=flag)(folder)

    stages = [Stage("a", "k1", first), Stage("b", "k2", second),
              Stage("c", "k3", _writer("c", log, reads=(cache.path("a", "k1"), cache.path("b", "k2"))), after=("a", "b"))]
    announced: list[str] = []
    timing = run_side_by_side(cache, stages, workers=2, threads=1, announce=announced.append)
    assert list(timing) == ["a", "b", "c"] and all(seconds > 0 for seconds in timing.values())
    outs = {name: json.loads((cache.path(name, key) / "out.json").read_text()) for name, key in
            (("a", "k1"), ("b", "k2"), ("c", "k3"))}
    assert {out["threads"] for out in outs.values()} == {1}
    assert len({out["pid"] for out in outs.values()} | {os.getpid()}) == 4  # each in its own process
    assert log.read_text().splitlines()[-1] == "c"
    assert "[study] c: done in" in announced[-1] and announced.count("[study] a ...") == 1


def test_cached_stages_start_no_process_and_reruns_reuse_everything(tmp_path):
    cache, log = StageCache(tmp_path / "cache"), tmp_path / "log"
    stages = [Stage("a", "k1", _writer("a", log)), Stage("b", "k2", _writer("b", log), after=("a",))]
    run_side_by_side(cache, stages, workers=2, threads=1, announce=lambda _: None)
    announced: list[str] = []
    timing = run_side_by_side(cache, stages, workers=2, threads=1, announce=announced.append)
    assert timing == {"a": 0.0, "b": 0.0} and announced == ["[study] a: cached in 0.0s", "[study] b: cached in 0.0s"]
    assert log.read_text().splitlines() == ["a", "b"]  # built once
    forced = StageCache(tmp_path / "cache", force=True)
    run_side_by_side(forced, stages, workers=2, threads=1, announce=lambda _: None)
    assert log.read_text().splitlines() == ["a", "b", "a", "b"]


def test_the_stage_most_others_wait_for_starts_first():
    stages = [Stage("leaf", "1", print), Stage("hub", "2", print), Stage("x", "3", print, after=("hub",)),
              Stage("y", "4", print, after=("x",)), Stage("z", "5", print, after=("hub", "leaf"))]
    assert priorities(stages) == {"leaf": 1, "hub": 3, "x": 1, "y": 0, "z": 0}


def test_a_plan_that_waits_for_a_later_or_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="waits for"):
        check_plan([Stage("b", "1", print, after=("a",)), Stage("a", "2", print)])


def _slow_writer(folder: Path) -> None:
    time.sleep(60)
    (folder / "never").write_text("")


def test_a_user_error_in_one_stage_stops_the_others_and_installs_neither(tmp_path):
    cache = StageCache(tmp_path / "cache")

    def bad(folder: Path) -> None:
        time.sleep(0.5)
        raise UserError("data.n must be positive, got 0")

    started = time.monotonic()
    with pytest.raises(UserError, match="data.n must be positive"):
        run_side_by_side(cache, [Stage("slow", "k1", _slow_writer), Stage("bad", "k2", bad)], workers=2, threads=1,
                         announce=lambda _: None)
    assert time.monotonic() - started < 30  # the slow one was stopped, not waited for
    assert not cache.is_done("slow", "k1") and not cache.is_done("bad", "k2")
    assert not list((tmp_path / "cache" / "bad").glob("*.tmp"))  # the failed build cleaned its folder


def test_a_crash_or_a_killed_stage_is_reported_with_its_name(tmp_path):
    cache = StageCache(tmp_path / "cache")

    def crash(folder: Path) -> None:
        raise ZeroDivisionError("boom")

    with pytest.raises(StageFailed, match=r"stage crash failed: ZeroDivisionError: boom"):
        run_side_by_side(cache, [Stage("crash", "k", crash)], workers=2, threads=1, announce=lambda _: None)

    def killed(folder: Path) -> None:
        os._exit(9)  # what an out-of-memory kill looks like from here: no report

    with pytest.raises(StageFailed, match=r"stage killed: its process ended without a result \(exit code 9"):
        run_side_by_side(cache, [Stage("killed", "k", killed)], workers=2, threads=1, announce=lambda _: None)


SIGTERM_SCRIPT = """
import sys, time
from pathlib import Path
from vlbridge.study.cache import StageCache
from vlbridge.study.schedule import Stage, run_side_by_side

root = Path(sys.argv[1])

def slow(folder):
    import os
    (root / "child.pid").write_text(str(os.getpid()))
    time.sleep(120)

run_side_by_side(StageCache(root / "cache"), [Stage("slow", "k", slow)], workers=2, threads=1,
                 announce=lambda line: print(line, flush=True))
"""


def test_sigterm_to_the_study_stops_its_stage_processes_and_installs_nothing(tmp_path):
    import signal
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(SIGTERM_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    pid_file = tmp_path / "child.pid"
    deadline = time.time() + 60
    while not pid_file.exists():
        assert time.time() < deadline and parent.poll() is None, "the stage never started"
        time.sleep(0.05)
    child = int(pid_file.read_text())
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 128 + signal.SIGTERM
    deadline = time.time() + 10
    while Path(f"/proc/{child}").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists(), "the stage's process outlived the study"
    assert not StageCache(tmp_path / "cache").is_done("slow", "k")
    assert not list((tmp_path / "cache" / "slow").glob(".k.*.tmp"))  # the stopped build removed its folder
