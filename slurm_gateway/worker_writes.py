"""Worker records written in bulk: hundreds of workers created, submitted or stopped without
holding the event loop (the gateway's one thread, which serves every request).

The stock backend writes each worker record in a transaction of its own, from each of the
hundreds of reconcilers a ``scale(500)`` wakes in one pass of the event loop: a second or
more in which no request was answered. Here:

- :class:`WriteBehindData` (the backend's ``DataManager``, see :meth:`adopt`) changes a
  worker's record in memory at once, as the stock code expects, and writes every worker
  change made in one pass of the loop in one transaction at its end, ``executemany`` in
  statements of :data:`RECORDS_PER_STATEMENT`. If the database fails, the changes are kept
  and written again :data:`RETRY_DELAY` seconds later (memory is what the gateway serves;
  the database is what a restarted gateway reads back).
- :func:`insert_workers` creates workers' records with ``INSERT ... RETURNING`` (one
  statement per :data:`RECORDS_PER_STATEMENT`); a scale-up creates
  ``batching.WORKERS_PER_PASS`` at a time, a yield to the loop between.
- :class:`BulkWorkerOverrides` overrides two private methods of ``DBBackendBase`` (listed
  with their source's digest in :data:`OVERRIDDEN`; ``dgs_compat.internals_problems``
  fails the unit tests when a release changes one): ``_check_cluster_scale`` (creates
  with :func:`insert_workers`) and ``_cluster_to_closing`` (the workers of a cluster
  being stopped are marked closing in one write, instead of each passing through a
  reconciler that writes it alone and rescans the cluster).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator

import sqlalchemy as sa
from dask_gateway_server.backends.db_base import Cluster, DataManager, JobStatus, Worker
from dask_gateway_server.backends.db_base import workers as workers_table
from dask_gateway_server.utils import timestamp

from .batching import WORKERS_PER_PASS
from .tls_keys import KeyPool, PooledKeyData

#: Worker records in one SQL statement (one multi-row INSERT, or one executemany UPDATE).
RECORDS_PER_STATEMENT = 100
#: Seconds before worker changes the database refused are written again.
RETRY_DELAY = 1.0

# ---- the stock private methods overridden here -----------------------------------------
#: ``DBBackendBase`` methods overridden by :class:`BulkWorkerOverrides`, with their
#: parameters and the SHA-256 (first 16 hex digits) of their stock source, as reviewed.
OVERRIDDEN = {
    "_check_cluster_scale": (["self", "cluster"], "7e38dd0a6c29dfa4"),
    "_cluster_to_closing": (["self", "cluster"], "f095b95f94a525ba"),
}
#: ``DataManager`` methods :class:`WriteBehindData` replaces, the same way.
REPLACED = {
    "update_worker": (["self", "worker", "kwargs"], "acd7065d8ab3a352"),
    "update_workers": (["self", "updates"], "42625686f488e8bb"),
}


def _chunks(items: list, size: int = RECORDS_PER_STATEMENT) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def insert_workers(data: DataManager, cluster: Cluster, count: int) -> list[Worker]:
    """``count`` new workers of a cluster, as ``DataManager.create_worker`` makes them, in
    one transaction (``INSERT ... RETURNING``, at most :data:`RECORDS_PER_STATEMENT`
    records a statement)."""
    rows = [
        {
            "cluster_id": cluster.id,
            "name": uuid.uuid4().hex,
            "status": JobStatus.CREATED,
            "target": JobStatus.RUNNING,
            "state": {},
            "start_time": timestamp(),
            "close_expected": False,
        }
        for _ in range(count)
    ]
    insert = workers_table.insert().returning(workers_table.c.id, sort_by_parameter_order=True)
    created = []
    with data.db.begin() as connection:
        for chunk in _chunks(rows):
            ids = connection.execute(insert, chunk).scalars().all()
            for worker_id, row in zip(ids, chunk, strict=True):
                fields = {k: v for k, v in row.items() if k != "cluster_id"}
                created.append(Worker(id=worker_id, cluster=cluster, **fields))
    for worker in created:
        cluster.workers[worker.name] = worker
    return created


class WriteBehindData(PooledKeyData):
    """The stock ``DataManager`` whose worker changes are written at the end of the event
    loop's pass (see the module docstring) and whose clusters' TLS keys are made ahead
    (``tls_keys``); everything else is the stock code's."""

    _pending: dict[Worker, dict]
    _flush_handle: asyncio.Handle | None
    _log: logging.Logger

    @classmethod
    def adopt(cls, data: DataManager, log: logging.Logger) -> WriteBehindData:
        """The same records, engine and indexes as ``data`` (the stock setup's)."""
        adopted = cls.__new__(cls)
        adopted.__dict__.update(vars(data))
        adopted._pending, adopted._flush_handle, adopted._log = {}, None, log
        adopted.keys = KeyPool()
        adopted.keys.refill()
        return adopted

    def update_worker(self, worker: Worker, **kwargs) -> None:
        self.update_workers([(worker, kwargs)])

    def update_workers(self, updates: list[tuple[Worker, dict]]) -> None:
        for worker, fields in updates:
            for name, value in fields.items():
                setattr(worker, name, value)
            self._pending.setdefault(worker, {}).update(fields)
        if self._pending and self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush_or_retry)

    @property
    def unwritten(self) -> int:
        """Workers whose changes are not in the database yet."""
        return len(self._pending)

    def flush(self) -> None:
        """Write the pending worker changes now, in one transaction (raises if it fails)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        pending, self._pending = self._pending, {}
        by_columns: dict[tuple[str, ...], list[dict]] = {}
        for worker, fields in pending.items():
            by_columns.setdefault(tuple(sorted(fields)), []).append({"_id": worker.id, **fields})
        update = workers_table.update().where(workers_table.c.id == sa.bindparam("_id"))
        try:
            with self.db.begin() as connection:
                for rows in by_columns.values():
                    for chunk in _chunks(rows):
                        connection.execute(update, chunk)
        except Exception:
            # Kept, under what changed since (newer values win).
            for worker, fields in pending.items():
                self._pending[worker] = {**fields, **self._pending.get(worker, {})}
            raise

    def _flush_or_retry(self) -> None:
        self._flush_handle = None
        try:
            self.flush()
        except Exception as exc:
            self._log.warning(
                "Could not write %d worker record(s), retrying in %.0f s: %s",
                len(self._pending),
                RETRY_DELAY,
                str(exc).splitlines()[0][:300],
            )
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(RETRY_DELAY, self._flush_or_retry)


class BulkWorkerOverrides:
    """The backend's bulk worker writes (see the module docstring). The backend calls
    :meth:`write_workers_behind` first thing in ``do_setup``."""

    def write_workers_behind(self) -> None:
        """Make the stock setup's ``DataManager`` a :class:`WriteBehindData` (before any
        reconciler runs: nothing is pending)."""
        self.db = WriteBehindData.adopt(self.db, self.log)

    async def cleanup(self) -> None:
        await super().cleanup()
        if isinstance(self.db, WriteBehindData) and self.db.unwritten:
            try:
                self.db.flush()
            except Exception as exc:
                self.log.warning(
                    "At exit, %d worker record(s) could not be written (SLURM's view is "
                    "reconciled at the next start): %r",
                    self.db.unwritten,
                    exc,
                )

    async def _check_cluster_scale(self, cluster: Cluster) -> None:
        if cluster.worker_start_failure_count >= self.worker_start_failure_limit:
            return await super()._check_cluster_scale(cluster)
        while cluster.target == JobStatus.RUNNING:
            missing = cluster.count - len(cluster.active_workers())
            if missing <= 0:
                return
            batch = min(missing, WORKERS_PER_PASS)
            for worker in insert_workers(self.db, cluster, batch):
                self.log.info("Created worker %s for cluster %s", worker.name, cluster.name)
                self.queue.put(worker)
            await asyncio.sleep(0)

    async def _cluster_to_closing(self, cluster: Cluster) -> None:
        # All jobs are cancelled together with the scheduler's (supports_bulk_shutdown):
        # a worker is closing as soon as its cluster is. Only a worker not yet submitted
        # (maybe being submitted now) goes through its reconciler, which waits for that.
        self.log.debug("Preparing to stop cluster %s", cluster.name)
        updates, unsubmitted = [], []
        for worker in cluster.workers.values():
            if worker.target >= JobStatus.CLOSING:
                continue
            closing = {"target": JobStatus.CLOSING}
            if worker.status == JobStatus.CREATED:
                unsubmitted.append(worker)
            elif worker.status < JobStatus.CLOSING:
                closing["status"] = JobStatus.CLOSING
            updates.append((worker, closing))
        self.db.update_workers(updates)
        for worker in unsubmitted:
            self.queue.put(worker)
        self.db.update_cluster(cluster, status=JobStatus.CLOSING)
        if not unsubmitted:
            self.queue.put(cluster)  # else the last of them queues it (reconcile_worker)
        cluster.ready.set()
