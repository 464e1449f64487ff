"""Coalesce requests that arrive close together into one SLURM call.

``scale(500)`` makes dask-gateway start 500 workers one by one; each start is added
to the open batch of its cluster, and a batch is submitted as one job array a few
milliseconds after it opened (or at once when full). Cancellations of one user are
gathered the same way into one ``scancel``. The callers of a batch are resumed
:data:`RESUMED_PER_PASS` at a time, so that requests are served in between.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

#: Callers of one batch resumed in one pass of the event loop: each goes on with its own
#: work (the stock reconcilers' database writes, logs), all of it before any request is
#: served again.
RESUMED_PER_PASS = 50


class Coalescer:
    """Gathers items per key; ``flush(key, items)`` returns one result per item.

    If the caller of :meth:`add` stopped waiting (cancelled) before its batch was
    flushed, its result is passed to ``unclaimed(key, result)`` instead, so that
    nothing it created (a job) is left untracked.
    """

    def __init__(
        self,
        flush: Callable[[Hashable, list], Awaitable[list]],
        *,
        unclaimed: Callable[[Hashable, Any], None] | None = None,
        window: float = 0.02,
        max_batch: int = 1000,
    ):
        self._flush = flush
        self._unclaimed = unclaimed
        self.window = window
        self.max_batch = max_batch
        self._open: dict[Hashable, list[tuple[Any, asyncio.Future]]] = {}
        self._tasks: set[asyncio.Task] = set()

    async def add(self, key: Hashable, item: Any) -> Any:
        """Add ``item`` to the open batch of ``key``; return its result once flushed."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = []
            loop.call_later(self.window, self._start_flush, key, batch)
        batch.append((item, future))
        if len(batch) >= self.max_batch:
            self._start_flush(key, batch)
        return await future

    def _start_flush(self, key: Hashable, batch: list) -> None:
        if self._open.get(key) is not batch:
            return  # already flushed because it was full
        del self._open[key]
        task = asyncio.ensure_future(self._run(key, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: Hashable, batch: list) -> None:
        items = [item for item, _ in batch]
        try:
            results = await self._flush(key, items)
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for number, ((_, future), result) in enumerate(zip(batch, results, strict=True)):
            if number and number % RESUMED_PER_PASS == 0:
                await asyncio.sleep(0)  # the callers resumed so far run in this pass
            if not future.done():
                future.set_result(result)
            elif future.cancelled() and self._unclaimed is not None:
                self._unclaimed(key, result)
