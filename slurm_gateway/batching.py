"""Coalesce requests that arrive close together into one SLURM call.

``scale(500)`` makes dask-gateway start 500 workers one by one; each start is added
to the open batch of its cluster, and a batch is submitted as one job array once no new
start has come for ``window`` seconds (or ``max_wait`` after it opened, or at once when
full). Cancellations of one user are gathered the same way into one ``scancel``.

The gateway does its work for hundreds of workers :data:`WORKERS_PER_PASS` at a time (per
cluster), one pass of the event loop each: workers created (``worker_writes``), callers of
a batch resumed (here). A request needs a few passes to be answered (read, handled, written), so
the length of one pass is what it waits, several times over: 100 workers a pass made one
pass about 30 ms on the dev cluster and a ``list_clusters`` during ``scale(500)`` up to
120 ms. Since the workers now come a few at a time, the window waits for a quiet gap rather
than a fixed time from the first, or ``scale(500)`` would leave as many small arrays.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

#: Workers the gateway handles in one pass of the event loop (created, or callers of a
#: batch resumed): each goes on with its own work (the stock reconcilers' database writes,
#: logs), all of it before any request is served again. About 0.3 ms each.
WORKERS_PER_PASS = 25
#: The longest a batch stays open while items keep coming (``max_wait`` default).
MAX_WAIT = 0.5


@dataclass
class _Batch:
    """An open batch: its items with their callers' futures, and when it opened and last
    grew (event-loop time)."""

    opened: float
    last_added: float
    entries: list[tuple[Any, asyncio.Future]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


def flush_due(opened: float, last_added: float, window: float, max_wait: float) -> float:
    """When a batch that opened at ``opened`` and last grew at ``last_added`` is flushed:
    ``window`` after its last item, but no later than ``max_wait`` after it opened."""
    return min(last_added + window, opened + max_wait)


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
        max_wait: float = MAX_WAIT,
        max_batch: int = 1000,
    ):
        self._flush = flush
        self._unclaimed = unclaimed
        self.window = window
        self.max_wait = max(max_wait, window)
        self.max_batch = max_batch
        self._open: dict[Hashable, _Batch] = {}
        self._tasks: set[asyncio.Task] = set()

    async def add(self, key: Hashable, item: Any) -> Any:
        """Add ``item`` to the open batch of ``key``; return its result once flushed."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        now = loop.time()
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _Batch(opened=now, last_added=now)
            due = flush_due(batch.opened, now, self.window, self.max_wait)
            batch.timer = loop.call_at(due, self._due, key, batch)
        batch.last_added = now
        batch.entries.append((item, future))
        if len(batch.entries) >= self.max_batch:
            self._start_flush(key, batch)
        return await future

    def _due(self, key: Hashable, batch: _Batch) -> None:
        if self._open.get(key) is not batch:
            return  # already flushed because it was full
        loop = asyncio.get_running_loop()
        due = flush_due(batch.opened, batch.last_added, self.window, self.max_wait)
        if due > loop.time():
            batch.timer = loop.call_at(due, self._due, key, batch)  # grew since: wait more
        else:
            self._start_flush(key, batch)

    def _start_flush(self, key: Hashable, batch: _Batch) -> None:
        del self._open[key]
        if batch.timer is not None:
            batch.timer.cancel()
        task = asyncio.ensure_future(self._run(key, batch.entries))
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
            if number and number % WORKERS_PER_PASS == 0:
                await asyncio.sleep(0)  # the callers resumed so far run in this pass
            if not future.done():
                future.set_result(result)
            elif future.cancelled() and self._unclaimed is not None:
                self._unclaimed(key, result)
