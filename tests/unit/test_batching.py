"""Coalescing: requests close together become one call; nothing created is lost."""

import asyncio
import time

import pytest

from slurm_gateway.batching import WORKERS_PER_PASS, Coalescer, flush_due


def test_requests_close_together_make_one_call_per_key():
    calls = []

    async def flush(key, items):
        calls.append((key, list(items)))
        return [f"{key}-{item}" for item in items]

    async def main():
        coalescer = Coalescer(flush, window=0.01)
        return await asyncio.gather(
            *(coalescer.add("a", i) for i in range(100)), coalescer.add("b", 0)
        )

    results = asyncio.run(main())
    assert results == [f"a-{i}" for i in range(100)] + ["b-0"]
    assert sorted(len(items) for _, items in calls) == [1, 100]


def test_a_batch_leaves_after_a_quiet_gap_but_no_later_than_its_longest_wait():
    assert flush_due(opened=10.0, last_added=10.0, window=0.02, max_wait=0.5) == 10.02
    assert flush_due(opened=10.0, last_added=10.3, window=0.02, max_wait=0.5) == 10.32
    assert flush_due(opened=10.0, last_added=10.49, window=0.02, max_wait=0.5) == 10.5


def test_items_that_keep_coming_a_few_at_a_time_make_one_call_not_many():
    """scale(500) creates its workers a few per pass of the loop, over more than the window:
    they still leave as one job array (a window counted from the first item made several)."""
    sizes = []

    async def flush(key, items):
        sizes.append(len(items))
        return items

    async def main():
        coalescer = Coalescer(flush, window=0.1, max_wait=5)
        added = []
        for group in range(20):  # over 0.4 s: four windows, a group every fifth of one
            added += [asyncio.ensure_future(coalescer.add("k", (group, i))) for i in range(5)]
            await asyncio.sleep(0.02)
        return await asyncio.gather(*added)

    assert len(asyncio.run(main())) == 100
    assert sizes == [100]


def test_items_that_never_stop_coming_leave_at_the_longest_wait():
    sizes = []

    async def flush(key, items):
        sizes.append(len(items))
        return items

    async def main():
        coalescer = Coalescer(flush, window=0.05, max_wait=0.1)
        added = []
        started = time.monotonic()
        while time.monotonic() - started < 0.35:
            added.append(asyncio.ensure_future(coalescer.add("k", len(added))))
            await asyncio.sleep(0.01)
        await asyncio.gather(*added)
        return len(added)

    added = asyncio.run(main())
    assert sum(sizes) == added and len(sizes) >= 3, sizes


def test_full_batch_is_flushed_at_once_and_the_rest_follows():
    sizes = []

    async def flush(key, items):
        sizes.append(len(items))
        return items

    async def main():
        coalescer = Coalescer(flush, window=5, max_batch=10)
        return await asyncio.wait_for(
            asyncio.gather(*(coalescer.add("k", i) for i in range(10))), 1
        )

    assert asyncio.run(main()) == list(range(10))
    assert sizes == [10]


def test_failure_reaches_every_waiter():
    async def flush(key, items):
        raise RuntimeError("sbatch refused")

    async def main():
        coalescer = Coalescer(flush, window=0.01)
        return await asyncio.gather(
            *(coalescer.add("k", i) for i in range(3)), return_exceptions=True
        )

    assert [str(r) for r in asyncio.run(main())] == ["sbatch refused"] * 3


def test_result_of_a_caller_that_gave_up_is_handed_back():
    unclaimed = []

    async def flush(key, items):
        await asyncio.sleep(0.05)
        return [f"job-{item}" for item in items]

    async def main():
        coalescer = Coalescer(flush, window=0.01, unclaimed=lambda k, r: unclaimed.append(r))
        keep = asyncio.ensure_future(coalescer.add("k", 1))
        give_up = asyncio.ensure_future(coalescer.add("k", 2))
        await asyncio.sleep(0.02)
        give_up.cancel()
        with pytest.raises(asyncio.CancelledError):
            await give_up
        return await keep

    assert asyncio.run(main()) == "job-1"
    assert unclaimed == ["job-2"]


def test_the_callers_of_a_large_batch_are_resumed_a_few_at_a_time():
    async def scenario():
        passes = []

        async def flush(key, items):
            return items

        coalescer = Coalescer(flush, window=0.001, max_batch=1000)

        async def caller(item):
            await coalescer.add("k", item)
            passes.append(pass_number[0])

        pass_number = [0]

        def count_passes():
            pass_number[0] += 1
            if len(passes) < 200:
                asyncio.get_running_loop().call_soon(count_passes)

        asyncio.get_running_loop().call_soon(count_passes)
        await asyncio.gather(*(caller(i) for i in range(200)))
        return passes

    passes = asyncio.run(scenario())
    per_pass = {p: passes.count(p) for p in set(passes)}
    assert max(per_pass.values()) <= WORKERS_PER_PASS and len(per_pass) >= 4
