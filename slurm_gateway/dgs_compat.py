"""The one place that relies on dask-gateway-server's internals (written against 2026.3).

The public backend API (``do_*`` hooks, ``DataManager`` methods) is used elsewhere. Here,
and only here, the backend overrides private methods of ``DBBackendBase`` and writes to its
``workers`` table directly, each for a reason said where it is done:

- ``on_cluster_heartbeat``: replaced, not extended: the worker count a scheduler asks for
  is capped to the user's limits, and ``heartbeats`` decides what the message means for the
  workers (scale-down drops held and queued workers first; a running worker the message
  no longer lists is asked about (``workers_missing``), where the stock handler fails an
  assertion and refuses the heartbeat).
- ``_check_timeouts``: a worker's start timeout counts from when SLURM started its job (the
  stock check counts queue wait, cancelling workers merely waiting in a busy queue).
- The stock tables, for PostgreSQL (``db_url = "postgresql+psycopg://..."``): six columns
  have types that work in SQLite only (:data:`POSTGRESQL_TYPES`); they get a PostgreSQL
  variant at import (the stock ``metadata`` is changed in place), which leaves SQLite's
  schema as it was. After the stock setup, the ``DataManager``'s engine (its attribute
  ``db``) is replaced by :func:`~slurm_gateway.database.state_engine`'s (SQLite's commits
  without an fsync each, a bounded pool for a database server): the stock setup passes
  no such options.
- ``DaskGateway.health``, which the stock ``/api/health`` route calls: it always says
  "pass"; :func:`answer_health_with` makes it the backend's report (``health``).

The worker records' bulk writes override more, in ``worker_writes`` (its ``OVERRIDDEN`` and
``REPLACED``), and ``tls_keys`` copies the stock ``create_cluster`` and ``new_keypair``
(its ``STOCK_SOURCES``). :func:`internals_problems` lists what a new dask-gateway-server release
changed of what this relies on, the source of every overridden stock method included; the
unit tests assert it is empty, so such a release fails them loudly.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import time
from collections.abc import Awaitable, Callable

import sqlalchemy as sa
from dask_gateway_server import routes
from dask_gateway_server.app import DaskGateway
from dask_gateway_server.backends.db_base import (
    Cluster,
    DataManager,
    DBBackendBase,
    JobStatus,
    Worker,
    metadata,
)
from dask_gateway_server.backends.db_base import workers as workers_table
from dask_gateway_server.utils import Flag, timestamp
from sqlalchemy.dialects import postgresql

from .admission import is_worker_count
from .database import engine_summary, state_engine
from .heartbeats import read_heartbeat, scale_down_rank
from .lifecycle import (
    heartbeat_overdue,
    scheduler_timed_out,
    worker_start_failure,
    worker_start_timed_out,
)
from .tls_keys import STOCK_SOURCES
from .worker_writes import OVERRIDDEN as BULK_OVERRIDDEN
from .worker_writes import REPLACED, BulkWorkerOverrides

#: The private methods overridden here, with the parameters they are called with and the
#: SHA-256 (first 16 hex digits) of their stock source, as reviewed.
OVERRIDDEN = {
    "on_cluster_heartbeat": (["self", "cluster_name", "msg"], "a65e514c54edf95f"),
    "_check_timeouts": (["self"], "92712eb3fa39b945"),
}
#: The columns of the ``workers`` table written by ``worker_writes``.
WORKER_COLUMNS = {
    "id",
    "cluster_id",
    "name",
    "status",
    "target",
    "state",
    "start_time",
    "stop_time",
    "close_expected",
}
#: What the overrides use of the base class and its ``DataManager``.
USED_ATTRIBUTES = {
    # _db_encrypt_keys_default: the stock default, which settings.py falls back to.
    DBBackendBase: [
        "worker_start_failure_limit",
        "cluster_heartbeat_timeout",
        "cluster_heartbeat_period",
        "_db_encrypt_keys_default",
    ],
    DataManager: ["active_clusters", "update_clusters", "update_workers", "list_clusters"],
}
#: What the admin channel (admin.py) reads of a cluster record and awaits (its shutdown).
ADMIN_CLUSTER_FIELDS = {
    "name",
    "username",
    "status",
    "target",
    "count",
    "state",
    "config",
    "start_time",
}


class _IntFlag(sa.TypeDecorator):
    """An integer column the stock code writes Python bools to (``workers.close_expected``):
    PostgreSQL refuses a boolean for an integer column; SQLite takes it as 0 or 1."""

    impl = sa.Integer
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else int(value)


#: Columns whose stock type works in SQLite only, with that stock type and what they are in
#: PostgreSQL: it has no BINARY(n); the times are milliseconds since 1970, past a 32-bit
#: INTEGER (SQLite's integers have 64 bits); and close_expected gets bools.
POSTGRESQL_TYPES = {
    ("clusters", "token"): (sa.BINARY, postgresql.BYTEA),
    ("clusters", "start_time"): (sa.Integer, sa.BigInteger),
    ("clusters", "stop_time"): (sa.Integer, sa.BigInteger),
    ("workers", "start_time"): (sa.Integer, sa.BigInteger),
    ("workers", "stop_time"): (sa.Integer, sa.BigInteger),
    ("workers", "close_expected"): (sa.Integer, _IntFlag),
}


def _give_postgresql_variants() -> None:
    for (table, column), (stock, variant) in POSTGRESQL_TYPES.items():
        col = metadata.tables[table].c[column]
        if type(col.type) is stock:
            col.type = col.type.with_variant(variant(), "postgresql")


# Before any DataManager creates the tables: once, when the backend imports this module.
_give_postgresql_variants()

#: What the stock ``/api/health`` route does (``routes.health``): ask the gateway object.
HEALTH_CALL = 'request.app["gateway"].health()'


def answer_health_with(app, report: Callable[[], Awaitable[dict]]) -> None:
    """Make the stock ``/api/health`` answer ``report()`` (HTTP 503 when its ``status`` is
    ``fail``): the route calls ``app["gateway"].health()``, replaced here on that object."""
    app["gateway"].health = report


def internals_problems() -> list[str]:
    """What the installed dask-gateway-server lacks of the internals used here."""
    problems = []
    for cls, overridden in (
        (DBBackendBase, OVERRIDDEN),
        (DBBackendBase, BULK_OVERRIDDEN),
        (DataManager, REPLACED),
    ):
        for name, (parameters, digest) in overridden.items():
            method = getattr(cls, name, None)
            if method is None or inspect.iscoroutinefunction(method) != (cls is DBBackendBase):
                problems.append(f"{cls.__name__}.{name} is gone or no longer what it was")
            elif list(inspect.signature(method).parameters) != parameters:
                problems.append(f"{cls.__name__}.{name} now takes {inspect.signature(method)}")
            elif source_digest(method) != digest:
                problems.append(f"{cls.__name__}.{name} changed (digest {source_digest(method)})")
    for (module, name), digest in STOCK_SOURCES.items():
        function = importlib.import_module(module)
        for part in name.split("."):
            function = getattr(function, part, None)
        if function is None or source_digest(function) != digest:
            problems.append(f"{module}.{name} is gone or changed (copied in tls_keys)")
    columns = {column.name for column in workers_table.columns}
    if columns != WORKER_COLUMNS:
        problems.append(f"the workers table's columns are now {sorted(columns)}")
    for cls, names in USED_ATTRIBUTES.items():
        for name in names:
            if not hasattr(cls, name) and name not in getattr(cls, "class_traits", dict)():
                problems.append(f"{cls.__name__}.{name} is gone")
    for (table, column), (stock, _) in POSTGRESQL_TYPES.items():
        found = metadata.tables.get(table)
        if found is None or column not in found.c or type(found.c[column].type) is not stock:
            problems.append(f"the column {table}.{column} is gone or no longer {stock.__name__}")
    if not isinstance(getattr(DataManager(), "db", None), sa.Engine):
        problems.append("DataManager keeps its engine elsewhere than .db")
    health = getattr(DaskGateway, "health", None)
    if not inspect.iscoroutinefunction(health) or list(inspect.signature(health).parameters) != [
        "self"
    ]:
        problems.append("DaskGateway.health is gone or now takes arguments")
    route = inspect.unwrap(getattr(routes, "health", None) or (lambda: None))
    if HEALTH_CALL not in inspect.getsource(route):
        problems.append("the /api/health route no longer calls the gateway's health()")
    fields = set(inspect.signature(Worker).parameters)
    if not WORKER_COLUMNS - {"cluster_id", "stop_time"} | {"cluster"} <= fields:
        problems.append(f"Worker() now takes {sorted(fields)}")
    cluster_fields = set(inspect.signature(Cluster).parameters)
    if not ADMIN_CLUSTER_FIELDS <= cluster_fields or not isinstance(
        getattr(Cluster, "model_status", None), property
    ):
        problems.append(f"Cluster() now takes {sorted(cluster_fields)} (admin.py reads them)")
    if not hasattr(Flag, "__await__"):
        problems.append("Cluster.shutdown (a Flag) can no longer be awaited (admin.py)")
    return problems


def source_digest(function) -> str:
    """The first 16 hex digits of the SHA-256 of ``function``'s source."""
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


class StockOverrides(BulkWorkerOverrides):
    """The backend's overrides of ``DBBackendBase`` internals (see the module docstring;
    those of the bulk worker writes are inherited from ``worker_writes``).
    The backend provides ``allowed_worker_count``, ``job_info``, ``start_policy``,
    ``record_worker_failure``, ``workers_missing``, ``heartbeat_started`` and ``metrics``."""

    async def setup(self, app) -> None:
        await super().setup(app)
        # Swapped on the event-loop thread, the only one using the database: no connection
        # of the stock engine is in use now.
        engine = state_engine(self.db_url, self.db_debug)
        if engine is not None:
            self.db.db.dispose()
            self.db.db = engine
            self.log.info(
                "State database %s (%s)",
                engine.url.render_as_string(hide_password=True),
                engine_summary(engine),
            )

    async def on_cluster_heartbeat(self, cluster_name: str, msg: dict) -> None:
        # The stock handler's work, in its order, with the decisions of heartbeats.py: the
        # count capped to the user's limits, scale-down dropping held and queued workers
        # first, running workers missing from the message asked about (not an assertion).
        cluster = self.db.get_cluster(cluster_name)
        if cluster is None or cluster.target > JobStatus.RUNNING:
            return
        cluster.last_heartbeat = timestamp()
        started = not cluster.scheduler_address
        update = {}
        if cluster.status != JobStatus.RUNNING:
            update = {k: msg[k] for k in ("api_address", "scheduler_address", "dashboard_address")}
        count = self._allowed_heartbeat_count(cluster, msg.get("count"))
        if count != cluster.count:
            update["count"] = count
        rank = lambda worker: scale_down_rank(worker, self.job_info(worker))  # noqa: E731
        reading = read_heartbeat(cluster.workers.values(), msg, count, rank)
        self.log.info(
            "Cluster %s heartbeat [count: %d, n_active: %d, n_closing: %d, n_closed: %d]",
            cluster_name,
            count,
            len(msg.get("active_workers") or ()),
            len(msg.get("closing_workers") or ()),
            len(msg.get("closed_workers") or ()),
        )
        if update:
            self.db.update_cluster(cluster, **update)
            self.queue.put(cluster)
        targets = [(w, {"target": t}) for w, t in reading.ended]
        targets += [(w, {"target": JobStatus.STOPPED}) for w in reading.to_stop]
        self.db.update_workers(targets)
        for worker, _ in targets:
            self.queue.put(worker)
        if reading.newly_running:
            cluster.worker_start_failure_count = 0
            self.db.update_workers(
                [(w, {"status": JobStatus.RUNNING}) for w in reading.newly_running]
            )
            for worker in reading.newly_running:
                self.log.info("Worker %s is running", worker.name)
        self.db.update_workers([(w, {"close_expected": True}) for w in reading.close_expected])
        self.workers_missing(reading.missing)
        if started and cluster.scheduler_address:  # its first heartbeat: the cluster started
            self.metrics.cluster_started(cluster.start_time)
            self.heartbeat_started()

    def _allowed_heartbeat_count(self, cluster: Cluster, requested: object) -> int:
        """The heartbeat carries the number of workers the scheduler wants (scale, adapt):
        the user's own scheduler sends it, so only an int within her limits is taken."""
        count = self.allowed_worker_count(cluster, requested)
        if not is_worker_count(requested):
            self.log.warning("Cluster %s sent a bad worker count %.100r", cluster.name, requested)
        elif count < requested:
            self.log.info(
                "Cluster %s asked for %d workers; the user's limits leave %d",
                cluster.name,
                requested,
                count,
            )
        most = cluster.config.get("cluster_max_workers")  # the stock cap, kept
        return count if most is None else min(count, most)

    async def _check_timeouts(self) -> None:
        # A scheduler's start timeout counts from the cluster's creation (so that users
        # hear within minutes) or, with queue_aware_start, from its job's start.
        now = time.time()
        policy = self.start_policy
        cluster_updates, worker_updates = [], []
        for cluster in self.db.active_clusters():
            if cluster.status == JobStatus.SUBMITTED:
                job = self.job_info(cluster)
                if scheduler_timed_out(policy, now, cluster.start_time / 1000, job):
                    self.log.info("Cluster %s startup timed out", cluster.name)
                    cluster_updates.append((cluster, {"target": JobStatus.FAILED}))
            elif cluster.status == JobStatus.RUNNING:
                if heartbeat_overdue(cluster.last_heartbeat, now, self.cluster_heartbeat_timeout):
                    self.log.info("Cluster %s heartbeat timed out", cluster.name)
                    cluster_updates.append((cluster, {"target": JobStatus.FAILED}))
                    continue
                for worker in cluster.workers.values():
                    if worker.status == JobStatus.SUBMITTED and worker.target == JobStatus.RUNNING:
                        job = self.job_info(worker)
                        if worker_start_timed_out(policy, now, job):
                            failure = worker_start_failure(job, policy.worker_start_timeout)
                            self.record_worker_failure(cluster, failure)
                            cluster.worker_start_failure_count += 1
                            worker_updates.append((worker, {"target": JobStatus.FAILED}))
        self.db.update_clusters(cluster_updates)
        self.db.update_workers(worker_updates)
        for obj, _ in cluster_updates + worker_updates:
            self.queue.put(obj)
