"""Stop a training run cleanly on SIGTERM (what schedulers send) or SIGINT (Ctrl-C).

    with StopSignals() as stop:          # installs the handlers (main thread only), restores them after
        for step in ...:
            ...                          # the step runs to its end
            if stop.requested(env):      # a signal arrived: checkpoint this step, then raise
                raise stop.interrupted(step, checkpoint_path)

The first signal only sets a flag, so the step in progress finishes and the loop saves a
checkpoint at that step boundary; `--resume latest` then continues exactly. A second signal
gets the handler that was there before (Ctrl-C raises KeyboardInterrupt, SIGTERM kills): the
way out when a step hangs. In a torchrun job every rank checks the flags of all ranks each step
(one all-reduce of one number), so all ranks stop at the same step even if only one was signalled.

`TrainingInterrupted` (a UserError) carries the exit code a shell expects for the signal:
128 + signal number, 143 for SIGTERM and 130 for SIGINT.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import torch

from vlbridge.errors import TrainingInterrupted
from vlbridge.runtime import DistEnv

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # signals that stop a run at the next step boundary


class StopSignals:
    """Context manager: records the first SIGTERM/SIGINT instead of dying; see the module docstring."""

    def __init__(self):
        self.received: int | None = None  # number of the first stop signal, None until one arrives
        self.previous: dict[int, object] = {}  # handlers to put back (also on the second signal)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # signal.signal works only there
            for signum in STOP_SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _handle(self, signum: int, _frame) -> None:
        self.received = signum
        self._restore()  # a second signal acts as it would without us
        log.warning("%s received: stopping after this step with a checkpoint (send it again to stop at once)",
                    signal.Signals(signum).name)

    def _restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def requested(self, env: DistEnv) -> bool:
        """Whether any rank got a stop signal (the same answer on every rank)."""
        if not env.distributed:
            return self.received is not None
        import torch.distributed as dist

        flag = torch.tensor([0 if self.received is None else self.received], device=env.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if self.received is None and flag.item():
            self.received = int(flag.item())
        return bool(flag.item())

    def interrupted(self, step: int, checkpoint: Path) -> TrainingInterrupted:
        """The error that ends the run after its checkpoint of `step` was written."""
        name = signal.Signals(self.received).name
        return TrainingInterrupted(
            f"stopped by {name} after step {step}; checkpoint saved to {checkpoint}; "
            f"continue with the same command and --resume latest", exit_code=128 + self.received,
        )
