"""StageCache shared by several processes (two `vlbridge study` runs on one cache folder): one build
per stage, a waiting process reuses it, a killed builder's files never become a cached stage."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlbridge.study.cache import DONE, StageCache, content_key

KEY = content_key({"stage": "shared"})

# One process asking the cache for stage ("stage", KEY). Its build appends the process id to
# `pids` (one short append: atomic), writes `builder`, then sleeps, or waits for a `release`
# file when one is named. It says "ready" (a file) just before calling run, and may wait for
# a "go" file first so that two workers call run together.
WORKER = r"""
import json, os, sys, time
from pathlib import Path
from vlbridge.study.cache import StageCache
root, key, pids, ready, go, release, sleep, force = sys.argv[1:]
def build(folder):
    with open(pids, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    (folder / "builder").write_text(str(os.getpid()))
    if release:
        while not Path(release).exists():
            time.sleep(0.01)
    time.sleep(float(sleep))
    (folder / "out.txt").write_text(str(os.getpid()))
Path(ready).touch()
while go and not Path(go).exists():
    time.sleep(0.005)
result = StageCache(root, force=force == "1").run("stage", key, build)
print(json.dumps({"path": str(result.path), "reused": result.reused, "pid": os.getpid()}))
"""


def start_worker(tmp_path, tag, go="", release="", sleep=0.0, force=False):
    ready = tmp_path / f"ready-{tag}"
    args = [str(tmp_path / "cache"), KEY, str(tmp_path / "pids"), str(ready), str(go), str(release), str(sleep),
            "1" if force else "0"]
    proc = subprocess.Popen([sys.executable, "-c", WORKER, *args], stdout=subprocess.PIPE, text=True)
    proc.ready = ready
    return proc


def wait_for(condition, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def result_of(proc) -> dict:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])


def builders(tmp_path) -> list[int]:
    path = tmp_path / "pids"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def stage_dir(tmp_path) -> Path:
    return tmp_path / "cache" / "stage"


def wait_until_blocked_on_lock(tmp_path, waiters=1):
    """Until `waiters` processes wait for the stage's lock (/proc/locks lists them with '->'); a pause without /proc."""
    lock = stage_dir(tmp_path) / f".{KEY}.lock"
    wait_for(lock.exists, "the lock file")
    inode = f":{lock.stat().st_ino} "
    try:
        open("/proc/locks").close()
    except OSError:
        time.sleep(2.0)
        return

    def blocked():
        return sum("->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines()) >= waiters

    wait_for(blocked, "a process waiting for the lock")


def leftovers(tmp_path) -> list[str]:
    return sorted(p.name for p in stage_dir(tmp_path).iterdir() if p.suffix in (".tmp", ".old"))


def test_two_processes_build_a_stage_once_and_share_it(tmp_path):
    go = tmp_path / "go"
    procs = [start_worker(tmp_path, tag, go=go, sleep=1.0) for tag in ("a", "b")]
    wait_for(lambda: all(p.ready.exists() for p in procs), "both workers to start")
    go.touch()
    results = [result_of(p) for p in procs]
    assert len(builders(tmp_path)) == 1  # exactly one build ran
    assert results[0]["path"] == results[1]["path"]
    final = Path(results[0]["path"])
    assert (final / DONE).is_file() and (final / "out.txt").read_text() == str(builders(tmp_path)[0])
    assert sorted(r["reused"] for r in results) == [False, True]
    assert [r["pid"] for r in results if not r["reused"]] == builders(tmp_path)
    assert leftovers(tmp_path) == []


def test_a_killed_builder_leaves_no_done_stage_and_the_next_run_rebuilds(tmp_path):
    proc = start_worker(tmp_path, "a", release=tmp_path / "never")
    wait_for(lambda: builders(tmp_path) == [proc.pid], "the build to start")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    final = stage_dir(tmp_path) / KEY
    assert not final.exists() and not list(stage_dir(tmp_path).glob(f"*/{DONE}"))
    assert len(leftovers(tmp_path)) == 1  # the killed build's own temporary folder

    def build(folder):
        (folder / "out.txt").write_text("fresh")

    result = StageCache(tmp_path / "cache").run("stage", KEY, build)  # the lock died with its holder: no wait
    assert not result.reused and result.path == final
    assert sorted(p.name for p in final.iterdir()) == [DONE, "out.txt"]  # nothing of the killed build
    assert leftovers(tmp_path) == []  # its temporary folder was cleaned up
    assert StageCache(tmp_path / "cache").run("stage", KEY, build).reused


def test_a_waiting_process_builds_the_stage_itself_when_the_builder_is_killed(tmp_path):
    first = start_worker(tmp_path, "a", release=tmp_path / "never")
    wait_for(lambda: builders(tmp_path) == [first.pid], "the first build to start")
    second = start_worker(tmp_path, "b")
    wait_until_blocked_on_lock(tmp_path)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    result = result_of(second)
    final = Path(result["path"])
    assert not result["reused"] and builders(tmp_path) == [first.pid, second.pid]
    assert (final / "builder").read_text() == (final / "out.txt").read_text() == str(second.pid)
    assert leftovers(tmp_path) == []


def test_force_rebuilds_with_the_lock_and_a_waiter_reuses_the_build_it_waited_for(tmp_path):
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "out.txt").write_text(str(len(calls)))

    cache = StageCache(tmp_path / "cache")
    first = cache.run("stage", KEY, build)
    assert (stage_dir(tmp_path) / f".{KEY}.lock").is_file()  # the lock file stays
    forced = StageCache(tmp_path / "cache", force=True).run("stage", KEY, build)
    assert not forced.reused and forced.path == first.path and len(calls) == 2
    assert (forced.path / "out.txt").read_text() == "2" and (forced.path / DONE).is_file()
    assert leftovers(tmp_path) == []  # the replaced stage went too

    # A forced run that had to wait while another process rebuilt the stage takes that fresh build.
    release = tmp_path / "release"
    builder = start_worker(tmp_path, "a", release=release, force=True)
    wait_for(lambda: builders(tmp_path) == [builder.pid], "the forced build to start")
    waiter = start_worker(tmp_path, "b", force=True)
    wait_until_blocked_on_lock(tmp_path)
    release.touch()
    built, waited = result_of(builder), result_of(waiter)
    assert not built["reused"] and waited["reused"] and builders(tmp_path) == [builder.pid]
    assert (first.path / "out.txt").read_text() == str(builder.pid)
    # ... but a later forced run rebuilds again.
    assert not StageCache(tmp_path / "cache", force=True).run("stage", KEY, build).reused and len(calls) == 3


def test_a_failed_build_leaves_nothing_behind_and_releases_the_lock(tmp_path):
    def broken(folder):
        (folder / "partial").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        StageCache(tmp_path / "cache").run("stage", KEY, broken)
    assert leftovers(tmp_path) == [] and not (stage_dir(tmp_path) / KEY).exists()
    proc = start_worker(tmp_path, "a")  # another process can take the lock at once
    assert not result_of(proc)["reused"] and builders(tmp_path) == [proc.pid]
    assert (stage_dir(tmp_path) / KEY / DONE).is_file()
