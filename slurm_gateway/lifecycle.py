"""When a cluster or worker has timed out, and why a cluster failed: pure functions of the
cluster's facts and SLURM's, with no database, process or clock of their own.

The backend gathers the facts (:class:`ClusterFacts`, a :class:`~slurm_gateway.slurm.JobInfo`,
the time) and acts on the answers; every decision here is unit-tested without SLURM.
"""

from __future__ import annotations

from dataclasses import dataclass

from dask_gateway_server.backends.db_base import Cluster

from .slurm import NOT_THE_JOBS_FAULT, TIMEOUT, JobInfo, describe_job


@dataclass(frozen=True)
class StartPolicy:
    """How long schedulers and workers may take to start (the backend's settings)."""

    #: Seconds for the scheduler to contact the gateway (``cluster_start_timeout``).
    cluster_start_timeout: float
    #: Count ``cluster_start_timeout`` from the scheduler job's start, not the cluster's
    #: creation (``queue_aware_start``).
    queue_aware: bool
    #: With ``queue_aware``: seconds the scheduler job may wait in the queue.
    scheduler_queue_timeout: float
    #: Seconds for a worker to connect once its job runs (``worker_start_timeout``).
    worker_start_timeout: float


@dataclass(frozen=True)
class ClusterFacts:
    """What the gateway recorded about one cluster, as a failure message needs it."""

    name: str
    #: The scheduler's job id ("" before it was submitted).
    job_id: str
    #: True once the scheduler has contacted the gateway (it has an address).
    scheduler_started: bool
    #: The cluster's walltime as configured (e.g. ``"1-00:00:00"``).
    walltime: str
    #: The cluster's own log directory ("" before it was made).
    log_directory: str
    #: Workers in a row that failed to start, and how many make the cluster fail.
    worker_start_failures: int
    worker_failure_limit: int
    last_worker_failure: str = ""

    @classmethod
    def of(cls, cluster: Cluster, worker_failure_limit: int) -> ClusterFacts:
        """The facts of dask-gateway-server's record of a cluster."""
        return cls(
            name=cluster.name,
            job_id=cluster.state.get("job_id", ""),
            scheduler_started=bool(cluster.scheduler_address),
            walltime=cluster.config["walltime"],
            log_directory=cluster.state.get("log_directory", ""),
            worker_start_failures=cluster.worker_start_failure_count,
            worker_failure_limit=worker_failure_limit,
            last_worker_failure=cluster.state.get("last_worker_failure", ""),
        )


def scheduler_timed_out(
    policy: StartPolicy, now: float, created: float, job: JobInfo | None
) -> bool:
    """Whether a submitted cluster's scheduler took too long to contact the gateway.

    By default the time counts from the cluster's creation (users hear within
    ``cluster_start_timeout`` even from a busy queue); with ``queue_aware`` it counts from
    the scheduler job's start, and the queue wait has its own limit."""
    waited = now - created
    if not policy.queue_aware:
        return waited > policy.cluster_start_timeout
    if job is not None and job.running_since:
        return now - job.running_since > policy.cluster_start_timeout
    return waited > policy.scheduler_queue_timeout


def worker_start_timed_out(policy: StartPolicy, now: float, job: JobInfo | None) -> bool:
    """Whether a worker whose job SLURM started has not connected in time. A worker still
    waiting in the queue never times out: it keeps its place."""
    return bool(
        job is not None
        and job.running_since
        and now - job.running_since > policy.worker_start_timeout
    )


def heartbeat_overdue(last_heartbeat_ms: int, now: float, timeout: float) -> bool:
    """Whether a running cluster's scheduler has been silent for longer than ``timeout``."""
    return last_heartbeat_ms < (now - timeout) * 1000


def is_alive(job: JobInfo | None) -> bool:
    """Whether a job still counts as alive for the stock status checks: unknown, queued or
    running, or ended through no fault of its own (the poll replaces such a worker without
    counting a failure)."""
    return job is None or job.is_active or job.state in NOT_THE_JOBS_FAULT


def worker_start_failure(job: JobInfo, timeout: float) -> str:
    """Why a started worker job is given up on."""
    return f"{describe_job('worker', job)} but its worker did not connect within {timeout:.0f} s"


def scheduler_log(log_directory: str, job_id: str) -> str:
    """The path of a scheduler job's log, as the job script names it."""
    return f"{log_directory}/scheduler-{job_id}.log"


def cluster_failure(
    cluster: ClusterFacts, job: JobInfo, policy: StartPolicy
) -> tuple[str, str | None]:
    """One line saying why a cluster failed, with SLURM's facts about its scheduler job,
    and the log whose last line should be added to it (None: none)."""
    if not cluster.job_id:
        return f"Cluster {cluster.name} failed before its scheduler job was submitted", None
    facts = describe_job("scheduler", job)
    log_file = (
        scheduler_log(cluster.log_directory, cluster.job_id) if cluster.log_directory else None
    )
    if job.is_terminal:
        why = facts
        if job.state == TIMEOUT:
            why += f"; the cluster reached its walltime ({cluster.walltime})"
    elif not cluster.scheduler_started:
        if job.is_queued:
            limit = (
                policy.scheduler_queue_timeout
                if policy.queue_aware
                else policy.cluster_start_timeout
            )
            why = f"the scheduler did not start within {limit:.0f} s: {facts}"
        else:
            why = (
                f"the scheduler did not contact the gateway within "
                f"{policy.cluster_start_timeout:.0f} s: {facts}"
            )
        why += "; the job was cancelled"
    elif cluster.worker_start_failures >= cluster.worker_failure_limit:
        why = (
            f"{cluster.worker_start_failures} workers in a row failed to start, last: "
            f"{cluster.last_worker_failure or 'no details'}"
        )
        logs = f". Logs: {cluster.log_directory}" if cluster.log_directory else ""
        return f"Cluster {cluster.name} failed: {why}{logs}", None
    else:
        why = f"the scheduler stopped sending heartbeats: {facts}; the job was cancelled"
    if log_file is None:
        return f"Cluster {cluster.name} failed: {why}", None
    return f"Cluster {cluster.name} failed: {why}. Log: {log_file}", log_file


def with_last_log_line(reason: str, last_line: str) -> str:
    """A failure message with its job log's last line, before the log's path."""
    head, separator, log = reason.rpartition(". Log: ")
    if not separator:
        return f"{reason}; last log line: {last_line}"
    return f"{head}; last log line: {last_line}. Log: {log}"


def start_failure(cluster_name: str, error: Exception, public: tuple[type, ...]) -> str:
    """The failure recorded when a cluster could not be started: the error's own message
    if it is one meant for users (``public``), else its representation."""
    text = str(error) if isinstance(error, public) else repr(error)
    return f"Cluster {cluster_name} failed: {text}"
