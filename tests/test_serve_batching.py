"""MicroBatcher (vlbridge.serve.batching): concurrent submissions share calls, grouped, bounded, failures shared.

Spec: items submitted together run in one `run_batch` call (at most max_batch, split by group), each
caller gets its own item's result, a lone item waits no longer than the window, and an exception in
a call reaches every caller of that call but not the others.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from vlbridge.serve.batching import MicroBatcher


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture()
def executor():
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown()


def test_concurrent_items_share_calls_and_get_their_own_results(executor):
    calls = []

    def square(items, group):
        calls.append(list(items))
        time.sleep(0.01)
        return [x * x for x in items]

    async def main():
        batcher = MicroBatcher("square", square, executor, window_s=0.02, max_batch=8)
        results = await asyncio.gather(*(batcher.submit(x) for x in range(20)))
        await batcher.close()
        return results, batcher.stats

    results, stats = run(main())
    assert results == [x * x for x in range(20)]
    assert sorted(x for call in calls for x in call) == list(range(20))
    assert max(len(call) for call in calls) == 8 and len(calls) == 3
    assert (stats.batches, stats.items, stats.largest) == (3, 20, 8)


def test_groups_never_share_a_call(executor):
    calls = []

    def tag(items, group):
        calls.append((group, list(items)))
        return [f"{group}:{x}" for x in items]

    async def main():
        batcher = MicroBatcher("tag", tag, executor, window_s=0.02, max_batch=16)
        submissions = [batcher.submit(x, group="even" if x % 2 == 0 else "odd") for x in range(10)]
        results = await asyncio.gather(*submissions)
        await batcher.close()
        return results

    assert run(main()) == [f"{'even' if x % 2 == 0 else 'odd'}:{x}" for x in range(10)]
    assert all(all((x % 2 == 0) == (group == "even") for x in items) for group, items in calls)


def test_max_batch_one_is_one_call_per_item(executor):
    sizes = []

    def identity(items, group):
        sizes.append(len(items))
        return items

    async def main():
        batcher = MicroBatcher("one", identity, executor, window_s=0.05, max_batch=1)
        await asyncio.gather(*(batcher.submit(x) for x in range(6)))
        await batcher.close()

    run(main())
    assert sizes == [1] * 6


def test_a_lone_item_waits_about_the_window(executor):
    async def main():
        batcher = MicroBatcher("lone", lambda items, group: items, executor, window_s=0.05, max_batch=8)
        started = time.perf_counter()
        result = await batcher.submit("x")
        elapsed = time.perf_counter() - started
        await batcher.close()
        return result, elapsed

    result, elapsed = run(main())
    assert result == "x" and 0.04 <= elapsed < 1.0


def test_a_failing_call_fails_its_callers_only(executor):
    def picky(items, group):
        if group == "bad":
            raise ValueError("no odd numbers")
        return items

    async def main():
        batcher = MicroBatcher("picky", picky, executor, window_s=0.02, max_batch=8)
        results = await asyncio.gather(batcher.submit(2, "good"), batcher.submit(3, "bad"), batcher.submit(4, "good"),
                                       return_exceptions=True)
        after = await batcher.submit(6, "good")  # the worker survives a failed call
        await batcher.close()
        return results, after

    results, after = run(main())
    assert results[0] == 2 and results[2] == 4 and after == 6
    assert isinstance(results[1], ValueError) and "no odd numbers" in str(results[1])


def test_wrong_result_count_is_an_error(executor):
    async def main():
        batcher = MicroBatcher("short", lambda items, group: items[:-1], executor, window_s=0.0, max_batch=4)
        try:
            return await batcher.submit(1)
        finally:
            await batcher.close()

    with pytest.raises(RuntimeError, match="returned 0 results for 1 items"):
        run(main())


def test_settings_are_checked(executor):
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher("x", lambda items, group: items, executor, max_batch=0)
