"""Unwritable output, a full disk and the leftovers of a killed run, on real file systems.

- a read-only output place (a read-only tmpfs mount: root ignores file modes, not a read-only
  mount) is one line from every command that writes, before any model or LM is loaded;
- a full disk (a 256 KiB tmpfs filled up) during a checkpoint write is "no space left" in one
  line, and the last good checkpoint stays loadable and named by `latest`;
- a metrics.csv row torn by a kill is dropped on resume; `train clip --resume` of a run that
  never saved config.yaml refuses instead of training the defaults; folders are swapped in whole.

The mount tests need root and tmpfs (skipped otherwise).
"""

from __future__ import annotations

import errno
import os
import subprocess
import uuid

import pytest
import torch
from test_checkpoint_recovery import TinyTask, tiny_config

from vlbridge.checkpoint import load_latest_checkpoint
from vlbridge.cli import main
from vlbridge.errors import UserError
from vlbridge.io import atomic_dir, atomic_torch_save, check_writable_dir, check_writable_file
from vlbridge.runtime import DistEnv
from vlbridge.training.loop import run_training
from vlbridge.training.metrics_log import RunLogger


def mount_tmpfs(folder, options: str):
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    return folder


@pytest.fixture
def read_only(tmp_path):
    folder = mount_tmpfs(tmp_path / "ro", "size=64k,ro")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    folder = mount_tmpfs(tmp_path / "small", "size=256k")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def fill(folder) -> None:
    """Write a filler file until the file system is full."""
    fd = os.open(folder / f"filler-{uuid.uuid4().hex}", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlbridge: error:") and "\n" not in err and "Traceback" not in err, err
    return err


COMMANDS_THAT_WRITE = {  # argv with OUT where the output goes; every other path does not exist, so loading fails later
    "train clip": ["train", "clip", "--out", "OUT", "steps=1"],
    "train limber": ["train", "limber", "--encoder", "timm:nope@/missing.safetensors", "--lm", "/missing-lm",
                     "--out", "OUT"],
    "train ssl": ["train", "ssl", "--out", "OUT"],
    "extract": ["extract", "--encoder", "timm:nope@/missing.safetensors", "--dataset", "shapes", "--cache", "OUT"],
    "eval zeroshot --out": ["eval", "zeroshot", "--model", "/missing-clip", "--dataset", "shapes", "--out", "OUT/r.json"],
    "eval probe --cache": ["eval", "probe", "--model", "/missing-clip", "--dataset", "shapes", "--cache", "OUT"],
}


@pytest.mark.parametrize("command", COMMANDS_THAT_WRITE)
def test_a_read_only_output_is_one_line_before_any_work(read_only, command, capsys):
    argv = [arg.replace("OUT", str(read_only / "run")) for arg in COMMANDS_THAT_WRITE[command]]
    assert main(["-q", *argv]) == 2
    err = one_error_line(capsys)
    assert "is not writable: the file system is read-only" in err and str(read_only / "run") in err, err


def test_output_paths_of_the_wrong_kind_are_named(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="--out .*a-file is a file; expected a folder"):
        check_writable_dir(a_file)
    with pytest.raises(UserError, match=r"lies under a file \(.*a-file\)"):
        check_writable_dir(a_file / "run")
    with pytest.raises(UserError, match="is a folder; expected a file name"):
        check_writable_file(tmp_path)
    assert check_writable_dir(tmp_path / "new" / "run").is_dir() and not list((tmp_path / "new" / "run").iterdir())


def test_a_full_disk_is_one_line_and_the_old_file_stays(small_disk):
    target = small_disk / "state.pt"
    atomic_torch_save(target, {"w": torch.ones(10)})
    with pytest.raises(UserError) as caught:
        atomic_torch_save(target, {"w": torch.zeros(200_000)})  # 800 kB on a 256 kB disk
    assert str(caught.value) == f"cannot write {target}: no space left on the device"
    assert torch.equal(torch.load(target)["w"], torch.ones(10)) and os.listdir(small_disk) == ["state.pt"]


def test_a_full_disk_during_training_keeps_the_last_good_checkpoint(small_disk):
    config = tiny_config(log_every=100)  # checkpoints at steps 2, 4, 6; one metrics row, at the end

    def fill_after_step_3(step, _loss):
        if step == 3:
            fill(small_disk)

    task = TinyTask(config)
    with pytest.raises(UserError) as caught:
        run_training(task, config, small_disk, DistEnv(), on_step=fill_after_step_3)
    assert str(caught.value) == f"cannot write {small_disk / 'checkpoints' / 'step-00000004.pt'}: no space left on the device"
    path, state = load_latest_checkpoint(small_disk)
    assert path.name == "step-00000002.pt" and state["step"] == 2
    assert not [p for p in (small_disk / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_a_metrics_row_torn_by_a_kill_is_dropped_on_resume(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,loss\n1,2.5\n2,2.25\n3,2.0\n1")  # the kill cut row 10 after "1"
    logger = RunLogger(tmp_path, resume_step=3, tensorboard=False)
    logger.log(4, {"loss": 1.5})
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["step,loss", "1,2.5", "2,2.25", "3,2.0", "4,1.5"]
    RunLogger(tmp_path, resume_step=0, tensorboard=False)  # killed before the first checkpoint: a fresh file
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["step,loss"]


def test_resuming_a_run_that_never_saved_its_config_refuses_the_defaults(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)  # what a kill before config.yaml leaves: a folder, maybe metrics
    assert main(["-q", "train", "clip", "--out", str(run), "--resume", "latest"]) == 2
    err = one_error_line(capsys)
    assert "has no config.yaml" in err and "repeat the original command" in err
    assert not (run / "config.yaml").exists()


def test_a_folder_is_swapped_in_whole(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as staging:
        (staging / "a").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as staging:
            (staging / "a").write_text("half")
            raise RuntimeError("killed")
    assert (target / "a").read_text() == "first" and sorted(os.listdir(tmp_path)) == ["model"]
    with atomic_dir(target) as staging:
        (staging / "b").write_text("second")
    assert os.listdir(target) == ["b"] and sorted(os.listdir(tmp_path)) == ["model"]
