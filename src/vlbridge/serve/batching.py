"""Micro-batching: requests that arrive together run as one model call.

    batcher = MicroBatcher("caption", run_batch, executor, window_s=0.005, max_batch=16)
    caption = await batcher.submit(item, group=config_key)

`submit` queues the item and waits for its result. One worker task per batcher takes the first
waiting item, then keeps collecting for at most `window_s` (and never past `max_batch`), splits
what it got by `group` (items that can share a call, e.g. the same decoding options) and runs
each group through `run_batch(items, group) -> results` on `executor`, a single thread per model,
so model calls never overlap and the event loop stays free. While a batch runs, new requests
queue up and form the next batch (continuous batching), so a short window is enough.

`max_batch=1` turns batching off (one call per request): bench/serve.py measures the difference.
A `run_batch` exception fails every item of that group with the same exception.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

log = logging.getLogger(__name__)


@dataclass
class BatchStats:
    """Counters of one batcher (read by tests and /readyz)."""

    batches: int = 0  # model calls made
    items: int = 0  # items answered
    largest: int = 0  # the most items one call took
    sizes: list[int] = field(default_factory=list)  # size of each call, most recent last (kept short)


@dataclass
class _Pending:
    item: Any  # what run_batch receives
    group: Hashable  # items of one group share a call
    future: asyncio.Future  # resolved with the item's result


class MicroBatcher:
    """Collects concurrent submissions into batched `run_batch` calls on `executor`."""

    def __init__(self, name: str, run_batch: Callable[[list, Hashable], list], executor: Executor,
                 window_s: float = 0.005, max_batch: int = 16):
        if max_batch < 1 or window_s < 0:
            raise ValueError(f"max_batch must be >= 1 and window_s >= 0, got {max_batch}, {window_s}")
        self.name = name  # shown in logs
        self.run_batch = run_batch  # (items, group) -> one result per item, in order
        self.executor = executor  # where run_batch runs (one thread per model)
        self.window_s = window_s  # how long the first item of a batch waits for company
        self.max_batch = max_batch  # most items per call
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, item: Any, group: Hashable = None) -> Any:
        """The result of `item`, computed in a batch with whatever else arrives within the window."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._start(loop)
        future = loop.create_future()
        self._queue.put_nowait(_Pending(item, group, future))
        return await future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue = asyncio.Queue()
        self._task = loop.create_task(self._work(), name=f"batcher-{self.name}")

    async def close(self) -> None:
        """Stop the worker (pending items are cancelled); a worker of another, still running loop is told to stop."""
        task, loop = self._task, self._loop
        self._task = None
        if task is None or task.done():
            return
        if loop is asyncio.get_running_loop():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        elif not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)

    async def _work(self) -> None:
        while True:
            batch = await self._collect()
            groups: dict[Hashable, list[_Pending]] = {}
            for pending in batch:
                groups.setdefault(pending.group, []).append(pending)
            for group, members in groups.items():
                await self._run(group, [m for m in members if not m.future.done()])

    async def _collect(self) -> list[_Pending]:
        queue = self._queue
        batch = [await queue.get()]
        deadline = self._loop.time() + self.window_s
        while len(batch) < self.max_batch:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self, group: Hashable, members: list[_Pending]) -> None:
        if not members:
            return
        try:
            results = await self._loop.run_in_executor(self.executor, self.run_batch, [m.item for m in members], group)
            if len(results) != len(members):
                raise RuntimeError(f"{self.name}: run_batch returned {len(results)} results for {len(members)} items")
        except Exception as err:  # noqa: BLE001 - every waiting request gets the failure
            log.exception("%s batch of %d failed", self.name, len(members))
            for member in members:
                if not member.future.done():
                    member.future.set_exception(err)
            return
        self._count(len(members))
        for member, result in zip(members, results):
            if not member.future.done():
                member.future.set_result(result)

    def _count(self, size: int) -> None:
        stats = self.stats
        stats.batches += 1
        stats.items += size
        stats.largest = max(stats.largest, size)
        stats.sizes = (stats.sizes + [size])[-256:]
