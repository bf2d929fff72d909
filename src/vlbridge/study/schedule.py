"""How the study's stages run: one after another in this process, or side by side in forked ones.

    stages = [Stage("rung/clip", key, build), Stage("projector/clip", key2, build2, after=("rung/clip",)), ...]
    run_side_by_side(cache, stages, workers=2, threads=1, announce=print)

A `Stage` is one cached unit of work (`StageCache.run(kind, key, build)`) and the names of the
stages whose folders its build reads (`after`). The study plans every stage of every seed first
(`runner.plan_seed`), so the whole graph is known before anything runs.

`run_side_by_side` keeps up to `workers` stages building at once, each in a process forked from
this one that sets its torch thread count to `threads` and calls `StageCache.run`, so a stage's
output is exactly what a sequential run with that thread count writes: the cache's lock and
atomic rename make a stage built in a child indistinguishable from one built here. Why: on a
small CPU machine one training step does not keep two cores busy (two 1-thread tower steps at
once ran at 1.74x the throughput of one 2-thread step: `bench/tower_step.py`, 2-core VM,
2026-12-03, one run; LM stages with small batches gain too), so the ladder
rungs and the LM stages finish sooner side by side (docs/STUDY.md, "Where the time goes").

Which ready stage starts next: the one most other stages wait for (transitively), ties in plan
order, so the CLIP rung (every evaluation's CLIP-S scorer) starts first. A failing stage stops
the others (their unfinished folders are never installed) and is raised here: a `UserError`
with its one-line message, anything else as `StageFailed` after the child printed its traceback.
SIGTERM to the study (a scheduler's stop) or Ctrl-C stops the children the same way before the
study exits (143 / 130); a rerun builds what was lost.
Children write no progress bars (two bars on one terminal line garble each other); the parent
prints a line when a stage starts and when it ends.

Bit-identity of results therefore holds for the same machine, worker thread count and preset;
`results.json["environment"]` records both counts.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable

from vlbridge.errors import UserError
from vlbridge.study.cache import StageCache

log = logging.getLogger(__name__)

STOP_GRACE_S = 30.0  # how long a stopped child may take to clean up before it is killed


class StageFailed(RuntimeError):
    """A stage built in a child process raised something other than a UserError."""


@dataclass
class Stage:
    """One cached unit of the study and what it reads."""

    name: str  # shown and timed name, e.g. "rung/clip@1" (the cache folder is the part before "@")
    key: str  # content key of its inputs (cache.content_key)
    build: Callable[[Path], None]  # writes the stage's files into the folder it is given
    after: tuple[str, ...] = ()  # names of the stages whose outputs `build` reads
    distributed: bool = False  # under torchrun every rank builds it (DDP); else rank 0 alone

    @property
    def kind(self) -> str:
        return stage_kind(self.name)


def stage_kind(name: str) -> str:
    """The cache folder of a stage name: "rung/clip@1" -> "rung/clip" (the seed tag dropped)."""
    return name.split("@")[0]


def can_fork() -> bool:
    """Side-by-side stages need fork (the builds are closures; they cannot be pickled for spawn)."""
    return "fork" in multiprocessing.get_all_start_methods()


def check_plan(stages: list[Stage]) -> None:
    """Every `after` names an earlier stage (so plan order is a valid sequential order)."""
    seen: set[str] = set()
    for stage in stages:
        missing = [name for name in stage.after if name not in seen]
        if missing:
            raise ValueError(f"stage {stage.name} waits for {missing}, which are not planned before it")
        seen.add(stage.name)


def priorities(stages: list[Stage]) -> dict[str, int]:
    """name -> how many stages wait for it, directly or through others."""
    waiting: dict[str, set[str]] = {stage.name: set() for stage in stages}
    for stage in reversed(stages):  # a stage's dependents are planned after it
        for name in stage.after:
            waiting[name] |= {stage.name} | waiting[stage.name]
    return {name: len(dependents) for name, dependents in waiting.items()}


def run_side_by_side(cache: StageCache, stages: list[Stage], workers: int, threads: int,
                     announce: Callable[[str], None] = print) -> dict[str, float]:
    """Build every stage, up to `workers` at once in forked processes; returns name -> wall seconds."""
    check_plan(stages)
    rank = priorities(stages)
    order = {stage.name: position for position, stage in enumerate(stages)}
    pending = sorted(stages, key=lambda s: (-rank[s.name], order[s.name]))
    done: set[str] = set()
    running: dict[int, _Child] = {}  # sentinel -> child
    timing: dict[str, float] = {}
    previous = _exit_on_sigterm()
    try:
        while pending or running:
            _start_ready(cache, pending, done, running, workers, threads, timing, announce)
            if not running:
                break  # the rest were cached (check_plan: nothing waits for a stage that never comes)
            for sentinel in wait(list(running)):
                child = running.pop(sentinel)
                seconds = child.finish()
                timing[child.stage.name] = seconds
                done.add(child.stage.name)
                announce(f"[study] {child.stage.name}: {child.state} in {seconds:.1f}s")
    finally:
        _stop(list(running.values()))
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return {stage.name: timing[stage.name] for stage in stages}


def _exit_on_sigterm():
    """Make SIGTERM (what schedulers send) raise SystemExit(143) here, so the `finally` above stops the
    children instead of leaving them running; returns the handler to restore (None off the main thread).
    Children inherit it: a stopped child unwinds its build, which removes its temporary folder."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum: int, _frame) -> None:
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)


def _start_ready(cache, pending, done, running, workers, threads, timing, announce) -> None:
    """Start the best ready stages until `workers` run; cached ones are marked done without a process."""
    while len(running) < workers:
        stage = next((s for s in pending if all(name in done for name in s.after)), None)
        if stage is None:
            return
        pending.remove(stage)
        if cache.is_done(stage.kind, stage.key):
            timing[stage.name] = 0.0
            done.add(stage.name)
            announce(f"[study] {stage.name}: cached in 0.0s")
            continue
        announce(f"[study] {stage.name} ...")
        child = _Child.start(cache, stage, threads)
        running[child.process.sentinel] = child


class _Child:
    """A forked process building one stage, and the pipe it reports through."""

    def __init__(self, stage: Stage, process, receiver, started: float):
        self.stage = stage  # what it builds
        self.process = process  # multiprocessing.Process (fork)
        self.receiver = receiver  # read end of its report pipe
        self.started = started  # perf_counter at fork
        self.state = "done"  # "done" or "cached" (another process built it meanwhile)

    @classmethod
    def start(cls, cache: StageCache, stage: Stage, threads: int) -> "_Child":
        context = multiprocessing.get_context("fork")
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_build_in_child, args=(cache, stage, threads, sender),
                                  name=f"vlbridge-stage-{stage.kind}", daemon=False)
        started = time.perf_counter()
        process.start()
        sender.close()  # the child holds the only write end: EOF when it dies
        return cls(stage, process, receiver, started)

    def finish(self) -> float:
        """Wall seconds of the finished child; raises what the stage raised."""
        try:
            report = self.receiver.recv()
        except EOFError:  # it died before reporting
            report = None
        self.receiver.close()
        self.process.join()
        seconds = time.perf_counter() - self.started
        exitcode = self.process.exitcode
        self.process.close()  # its sentinel and pipe descriptors: a study forks a few dozen children
        if report is None:
            raise StageFailed(f"stage {self.stage.name}: its process ended without a result "
                              f"(exit code {exitcode}; killed, out of memory?)")
        if report[0] == "user-error":
            raise UserError(report[1])
        if report[0] == "failed":
            raise StageFailed(f"stage {self.stage.name} failed: {report[1]} (its traceback is above)")
        self.state = "cached" if report[1] else "done"
        return seconds


def _build_in_child(cache: StageCache, stage: Stage, threads: int, sender) -> None:
    """The child's whole life: one thread count, no progress bars, one stage, one report."""
    import torch

    _fresh_tqdm_lock()
    sys.stderr = _NotATerminal(sys.stderr)  # tqdm(disable=None) draws only on a terminal
    torch.set_num_threads(threads)
    try:
        result = cache.run(stage.kind, stage.key, stage.build)
        sender.send(("ok", result.reused))
    except UserError as err:
        sender.send(("user-error", str(err)))
    except SystemExit:  # stopped by SIGTERM (see _exit_on_sigterm): exit quietly, 128 + signal
        raise
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises it
        traceback.print_exc()
        sender.send(("failed", f"{type(err).__name__}: {err}"))
    finally:
        sender.close()


def _fresh_tqdm_lock() -> None:
    """A new tqdm write lock: the inherited one may have been held by a thread of the parent at fork."""
    from tqdm import std

    std.tqdm.set_lock(std.TqdmDefaultWriteLock())


class _NotATerminal:
    """sys.stderr as it is, except that it says it is no terminal."""

    def __init__(self, stream):
        self._stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _stop(children: list[_Child]) -> None:
    """Terminate unfinished children (their builds remove their temporary folders), then reap them."""
    for child in children:
        if child.process.is_alive():
            child.process.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children:
        child.process.join(max(0.0, deadline - time.monotonic()))
        if child.process.is_alive():
            log.warning("stage %s did not stop within %.0f s; killing it", child.stage.name, STOP_GRACE_S)
            child.process.kill()
            child.process.join()


def default_threads(workers: int) -> int:
    """Torch threads per stage process: the machine's cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))
