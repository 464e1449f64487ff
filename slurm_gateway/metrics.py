"""Prometheus metrics of the gateway: what they are, and the pure decisions behind their labels.

Every metric lives in the :class:`GatewayMetrics`' own ``CollectorRegistry`` (never the
process-global one), so that each gateway, and each unit test, has its own. Counters and
histograms are fed by the code that sees the event (``transport``, ``admission``, the
backend); the gauges of clusters, workers and SLURM's availability are computed when
Prometheus scrapes, from the gateway's own state (:class:`StateCollector`), so that they
can never drift from it. Serving them is ``metrics_service``.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from .lifecycle import ClusterFacts
from .slurm import TIMEOUT, JobInfo
from .transport import CommandResult

PREFIX = "slurm_gateway"

#: Seconds: SLURM commands take milliseconds to a minute (the runner's timeout).
COMMAND_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Seconds: queue waits and starts take seconds to hours.
WAIT_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 86400)

#: The reason classes of cluster failures (the ``reason`` label), see :func:`failure_class`.
FAILURE_CLASSES = (
    "oom",
    "walltime",
    "node_failure",
    "preempted",
    "cancelled",
    "scheduler_exit",
    "queue_timeout",
    "start_timeout",
    "heartbeat_lost",
    "worker_start_failures",
    "submit_refused",
    "user_error",
    "gateway_error",
    "other",
)

#: The states of the gauges (dask-gateway-server's JobStatus below STOPPED, lower case).
ACTIVE_STATES = ("created", "submitted", "running", "closing")

# Command labels: a command's file name, the user helper by a short name.
_COMMAND_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
_COMMAND_ALIASES = {"slurm-gateway-user-helper": "user-helper"}


def command_label(argv: list[str]) -> str:
    """The ``command`` label of a command line: ``sbatch``, ``squeue``, ``user-helper``...
    (its program's file name; the paths come from the admin's config, so the set is small)."""
    name = os.path.basename(argv[0]) if argv else ""
    name = _COMMAND_ALIASES.get(name, name)
    return name if _COMMAND_NAME.match(name) else "other"


def command_failure_kind(result: CommandResult) -> str | None:
    """Why a command counts as failed (the ``kind`` label), None if it did not fail:
    ``exit_status`` (ran, exited non-zero), ``timeout``, ``output_limit``, ``not_started``."""
    if result.ok:
        return None
    if result.truncated:
        return "output_limit"
    if result.stopped:
        return "timeout"
    if result.returncode == -1:
        return "not_started"
    return "exit_status"


# The reason class of a scheduler job that ended, by SLURM's final state.
_ENDED = {
    "OUT_OF_MEMORY": "oom",
    TIMEOUT: "walltime",
    "DEADLINE": "walltime",
    "NODE_FAIL": "node_failure",
    "BOOT_FAIL": "node_failure",
    "PREEMPTED": "preempted",
    "CANCELLED": "cancelled",
    "REVOKED": "cancelled",
    "FAILED": "scheduler_exit",
    "COMPLETED": "scheduler_exit",
    "SPECIAL_EXIT": "scheduler_exit",
}


def failure_class(cluster: ClusterFacts, job: JobInfo) -> str:
    """The reason class of a cluster's failure, from the same facts as
    :func:`slurm_gateway.lifecycle.cluster_failure` (which words the message) and in the
    same order: the scheduler job's end, else a start timeout, else its workers, else its
    heartbeats."""
    if not cluster.job_id:
        return "submit_refused"
    if job.is_terminal:
        return _ENDED.get(job.state, "other")
    if not cluster.scheduler_started:
        return "queue_timeout" if job.is_queued else "start_timeout"
    if cluster.worker_start_failures >= cluster.worker_failure_limit:
        return "worker_start_failures"
    return "heartbeat_lost"


def start_failure_class(error: Exception, slurm_errors: tuple[type, ...], user_errors) -> str:
    """The reason class of a cluster that could not be submitted: SLURM refused its job
    (``slurm_errors``), the user's files or options (``user_errors``), or the gateway."""
    if isinstance(error, slurm_errors):
        return "submit_refused"
    if isinstance(error, user_errors):
        return "user_error"
    return "gateway_error"


def slurm_time(text: str) -> float | None:
    """Epoch seconds of a time as squeue prints it (``2026-12-01T09:45:00``, local time);
    None for ``N/A``, ``Unknown`` or anything else."""
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def queue_wait(job: JobInfo) -> float | None:
    """Seconds a job waited in the queue, by SLURM's own submit and start times (None if
    either is unknown, or the job has not started)."""
    submitted, started = slurm_time(job.submit_time), slurm_time(job.start_time)
    if submitted is None or started is None or not job.is_running:
        return None
    return max(0.0, started - submitted)


@dataclass(frozen=True)
class StateCounts:
    """Clusters and workers by state (and by user), as the gauges show them."""

    clusters: dict[tuple[str, str], int]  # (user, state) -> count
    workers: dict[tuple[str, str], int]

    @classmethod
    def of(cls, clusters: Iterable) -> StateCounts:
        """Count the active clusters and their active workers (dask-gateway-server's
        ``Cluster`` records, or anything with ``username``, ``status`` and ``workers``)."""
        by_cluster, by_worker = Tally(), Tally()
        for cluster in clusters:
            state = cluster.status.name.lower()
            if state not in ACTIVE_STATES:
                continue
            by_cluster[cluster.username, state] += 1
            for worker in cluster.workers.values():
                worker_state = worker.status.name.lower()
                if worker_state in ACTIVE_STATES:
                    by_worker[cluster.username, worker_state] += 1
        return cls(dict(by_cluster), dict(by_worker))


def by_state(counts: dict[tuple[str, str], int]) -> dict[str, int]:
    """Per-user counts summed over users; every state present (0 if none)."""
    totals = dict.fromkeys(ACTIVE_STATES, 0)
    for (_, state), count in counts.items():
        totals[state] += count
    return totals


class StateCollector:
    """The gauges computed at each scrape: clusters and workers by state (by user too if
    ``per_user``), SLURM's and accounting's availability. ``clusters`` returns the
    gateway's cluster records; ``availability`` returns ``{"slurm": up, "accounting":
    up}`` (:meth:`~slurm_gateway.availability.Availability.slurm_parts`, which
    ``/api/health`` reads too; None: unknown yet).
    Both are called on the event loop that owns them (see metrics_service)."""

    def __init__(
        self,
        clusters: Callable[[], Iterable],
        availability: Callable[[], dict[str, bool | None]],
        per_user: bool,
    ):
        self._clusters = clusters
        self._availability = availability
        self.per_user = per_user

    def describe(self) -> list:
        return []  # computed at scrape time only (no default values to register)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = StateCounts.of(self._clusters())
        for what, tally in (("clusters", counts.clusters), ("workers", counts.workers)):
            gauge = GaugeMetricFamily(
                f"{PREFIX}_{what}",
                f"Active {what} by state (created, submitted, running, closing).",
                labels=["state"],
            )
            for state, count in by_state(tally).items():
                gauge.add_metric([state], count)
            yield gauge
            if self.per_user:
                gauge = GaugeMetricFamily(
                    f"{PREFIX}_user_{what}",
                    f"Active {what} by user and state (metrics_per_user).",
                    labels=["user", "state"],
                )
                for (user, state), count in sorted(tally.items()):
                    gauge.add_metric([user, state], count)
                yield gauge
        availability = self._availability()
        for part, doc in (
            ("slurm", "1 if slurmctld's last answer (squeue, scontrol ping)"),
            ("accounting", "1 if slurmdbd's last answer (sacct)"),
        ):
            up = availability.get(part)
            if up is not None:
                yield GaugeMetricFamily(
                    f"{PREFIX}_{part}_up", f"{doc} was one, else 0.", value=float(up)
                )


class GatewayMetrics:
    """The gateway's metrics in a registry of their own (see the module docstring)."""

    def __init__(self, *, process_metrics: bool = True):
        self.registry = CollectorRegistry()
        registry = self.registry
        self.command_seconds = Histogram(
            f"{PREFIX}_slurm_command_duration_seconds",
            "Seconds SLURM commands (and the user helper) took, by command.",
            ["command"],
            buckets=COMMAND_BUCKETS,
            registry=registry,
        )
        self.command_failures = Counter(
            f"{PREFIX}_slurm_command_failures",
            "SLURM commands that failed, by command and kind "
            "(exit_status, timeout, output_limit, not_started).",
            ["command", "kind"],
            registry=registry,
        )
        self.clusters_started = Counter(
            f"{PREFIX}_clusters_started",
            "Clusters whose scheduler started and contacted the gateway.",
            registry=registry,
        )
        self.cluster_failures = Counter(
            f"{PREFIX}_cluster_failures",
            "Clusters that failed, by reason class: " + ", ".join(FAILURE_CLASSES) + ".",
            ["reason"],
            registry=registry,
        )
        self.refused = Counter(
            f"{PREFIX}_requests_refused",
            "new_cluster requests refused by a per-user limit, by limit.",
            ["limit"],
            registry=registry,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Seconds the gateway's jobs waited in SLURM's queue (SLURM's submit to start "
            "time), by role (scheduler, worker).",
            ["role"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.time_to_running = Histogram(
            f"{PREFIX}_cluster_time_to_running_seconds",
            "Seconds from a cluster's creation to its scheduler contacting the gateway.",
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        for reason in FAILURE_CLASSES:
            self.cluster_failures.labels(reason)  # every class shows, at 0 until it happens
        if process_metrics:
            # The conventional names (process_resident_memory_bytes, ...).
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)

    def add_state(self, collector: StateCollector) -> None:
        self.registry.register(collector)

    def command_done(self, argv: list[str], result: CommandResult, seconds: float) -> None:
        """Record one command of the runner (``CommandRunner.on_command``)."""
        command = command_label(argv)
        self.command_seconds.labels(command).observe(seconds)
        kind = command_failure_kind(result)
        if kind is not None:
            self.command_failures.labels(command, kind).inc()

    def cluster_failed(self, reason: str) -> None:
        self.cluster_failures.labels(reason if reason in FAILURE_CLASSES else "other").inc()

    def cluster_started(self, created_ms: float, now: float | None = None) -> None:
        """A cluster's scheduler contacted the gateway; ``created_ms`` is its start_time."""
        self.clusters_started.inc()
        waited = (time.time() if now is None else now) - created_ms / 1000
        self.time_to_running.observe(max(0.0, waited))

    def job_running(self, job: JobInfo, role: str) -> None:
        """A job was first seen RUNNING (``JobTracker.on_running``)."""
        waited = queue_wait(job)
        if waited is not None:
            self.queue_wait.labels(role).observe(waited)

    def refused_by(self, limit: str) -> None:
        self.refused.labels(limit).inc()

    def exposition(self) -> bytes:
        """The text exposition format, as Prometheus scrapes it."""
        return generate_latest(self.registry)
