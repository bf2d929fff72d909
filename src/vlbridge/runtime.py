"""Runtime: devices, process groups (single process or `torchrun`), autocast and rank helpers.

The base layer every other part of vlbridge computes through.

`init_distributed(device)` reads the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK),
picks the backend (nccl on CUDA, gloo on CPU) and returns a `DistEnv`. Without torchrun it
returns a world of one and never touches torch.distributed, so every training entry point runs
the same way in both cases. Inside `local_world()` it returns a world of one under torchrun too:
work one rank does alone (a study stage on rank 0) then never waits on ranks that are not there.
`waiting_group(env)` is a gloo group with a long timeout for ranks that wait while rank 0 works
alone (`broadcast_object`, `barrier(env, group)`); the default group keeps torch's timeout.
`autocast(device)` gives bf16 autocast on GPU and a no-op on CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vlbridge.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0  # global rank of this process
    world_size: int = 1  # number of processes in the job
    local_rank: int = 0  # rank on this machine (selects the GPU)
    device: torch.device = torch.device("cpu")  # device this process computes on

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> this rank's GPU if CUDA is available, else CPU; otherwise the named device."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(preference)
    except RuntimeError as err:
        raise UserError(f"--device expects cpu, cuda, cuda:N or auto; got {preference!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {preference} asked for a GPU, but none is visible")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


_local_depth = 0  # > 0 inside local_world(): init_distributed gives a world of one
WAIT_TIMEOUT_S = 7 * 24 * 3600  # how long waiting_group's collectives wait for rank 0 (a week: its longest stage)


@contextlib.contextmanager
def local_world() -> Iterator[None]:
    """Inside: `init_distributed` returns a world of one (this rank, its device) even under torchrun,
    and `cleanup` of that env leaves the process group alone."""
    global _local_depth
    _local_depth += 1
    try:
        yield
    finally:
        _local_depth -= 1


def init_distributed(device_preference: str = "auto") -> DistEnv:
    """Join the torchrun process group if there is one; return this process's DistEnv."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if _local_depth:
        return DistEnv(rank=0, world_size=1, local_rank=local_rank, device=device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        log.info("joined process group: rank %d/%d, backend %s, device %s", rank, world_size, backend, device)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def barrier(env: DistEnv, group=None) -> None:
    """Wait for every rank (in `group`, default: the default group); no-op for one process."""
    if env.distributed:
        dist.barrier(group=group)


def waiting_group(env: DistEnv, timeout_s: float = WAIT_TIMEOUT_S):
    """A gloo group of every rank whose collectives wait up to `timeout_s` (None for one process).

    For ranks that wait while rank 0 works alone for longer than the default group's timeout
    (30 minutes for gloo): every rank must call this, in the same order as other collectives.
    """
    if not env.distributed:
        return None
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))


def broadcast_object(obj, env: DistEnv, group=None):
    """Rank 0's `obj` on every rank (any picklable object); `obj` itself for one process."""
    if not env.distributed:
        return obj
    box = [obj if env.is_main else None]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def cleanup(env: DistEnv) -> None:
    """Leave the process group (no-op for a single process)."""
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of `value` over ranks (a copy; the input is untouched)."""
    if not env.distributed:
        return value.detach().clone()
    reduced = value.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / env.world_size


def all_reduce_sum(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum of `value` over ranks (a detached copy)."""
    total = value.detach().clone()
    if env.distributed:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def unwrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def gather_objects(obj, env: DistEnv) -> list:
    """Every rank's `obj` as a list on every rank (rank order); [obj] for one process."""
    if not env.distributed:
        return [obj]
    gathered: list = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; fp32 (no autocast) on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """In a DataLoader worker: leave Ctrl-C / SIGTERM (sent to the whole process group) to the main process.

    A trainer stops at the next step boundary with a checkpoint (training/stop_signals.py), and
    an extraction keeps its finished chunks; a worker dying on the same signal would break the
    batch the main process is waiting for. Workers end with the main process as always
    (PyTorch shuts them down, or they see their parent die).
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
