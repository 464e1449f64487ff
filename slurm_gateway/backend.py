"""The SLURM backend: dask-gateway-server's ``do_*`` hooks and setup, composing the parts.

Each cluster is one scheduler job and one job per worker (workers started together leave
as one job array), submitted as the cluster's user through the command runner. What is
decided lives elsewhere: options (``user_options``), limits (``admission``), job scripts
(``jobspec``, ``rendering``), submitting and ending jobs (``jobs``), workers within SLURM's
submit limits (``worker_submission``, ``submit_limits``, ``cluster_reports``), SLURM's view of
them (``tracker``), when to ask it and jobs' end reports (``poll_plan``, ``job_ends``,
``end_reports``), ownership and orphans (``ownership``), timeouts and failure messages
(``lifecycle``), user files (``as_user``), HTTP (``api``), health, metrics (``metrics_service``),
the admin socket (``admin``), overrides of dask-gateway-server internals (``dgs_compat``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import pwd
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from dask_gateway_server.backends.db_base import Cluster, JobStatus, Worker
from dask_gateway_server.models import ClusterStatus

from .admin import AdminChannel
from .admission import Admissions, ClusterAdmission
from .api import failure_reason_middleware, request_body_middleware
from .as_user import AsUser, UserError
from .batching import Coalescer
from .cluster_reports import PendingReasonReports
from .dgs_compat import StockOverrides, answer_health_with
from .health import HealthMonitor
from .identity import user_problem
from .job_ends import JobEnds
from .jobs import JobControl, SlurmError
from .jobspec import JobScripts, user_log_directory
from .lifecycle import ClusterFacts, cluster_failure, is_alive, start_failure, with_last_log_line
from .metrics_service import MetricsService
from .ownership import JobOwners, OrphanSweep, Owner
from .rendering import template_environment
from .settings import SlurmBackendSettings
from .slurm import COMPLETED, UNKNOWN, JobInfo, describe_job, parse_max_array_size
from .state import ensure_private_directory
from .tracker import JobTracker
from .worker_submission import WorkerSubmission

# Seconds the gateway waits at start for SLURM to say which jobs ended while it was down.
RECONCILE_AT_START_TIMEOUT = 30.0

# Errors whose message is meant for users, recorded as a cluster's failure verbatim.
PUBLIC_ERRORS = (SlurmError, UserError, ValueError)


class SlurmBackend(
    AdminChannel,
    ClusterAdmission,
    WorkerSubmission,
    JobEnds,
    # Overrides of dask-gateway-server's methods (each module guards what it relies on):
    StockOverrides,
    PendingReasonReports,
    MetricsService,
    SlurmBackendSettings,
):
    """Run each Dask cluster as SLURM jobs (one scheduler job, one job per worker)
    submitted as the cluster's user through ``sudo``."""

    # Workers are cancelled together with the scheduler in one scancel.
    supports_bulk_shutdown = True

    # -- setup ---------------------------------------------------------------------------

    async def setup(self, app: web.Application) -> None:
        # Before the stock setup opens (and maybe creates) the database in it.
        ensure_private_directory(Path(self.state_directory))
        app.middlewares.append(failure_reason_middleware(self._recorded_failure))
        app.middlewares.append(request_body_middleware)
        self.add_job_end_route(app)
        await super().setup(app)
        answer_health_with(app, self.health.report)
        gc.freeze()  # the startup heap is never garbage; a full collection of it stalls 40 ms

    async def do_setup(self) -> None:
        self.write_workers_behind()  # before any reconciler runs (the first await)
        # The site's cluster settings are checked now, not at the first user's request.
        self.cluster_config_class(parent=self)
        self.runner = self.runner_class(parent=self, log=self.log)
        self.as_user = AsUser(self.runner, self.user_helper, max_log_bytes=self.max_log_bytes)
        self.user_policy = self.make_user_policy()
        self.limits = self.make_user_limits()
        self.start_policy = self.make_start_policy()
        self.admissions = Admissions(self.max_concurrent_starts_per_user, self.env_check_max_age)
        self.health = HealthMonitor.of(self)
        self._releasing: set[str] = set()  # users whose held workers are being submitted
        self._release_again: set[str] = set()  # ... and again after that, places freed since
        self._shared_retried: dict[str, float] = {}  # when, on others' job ends (by user)
        self._make_job_parts()
        self.task_pool.spawn(self.health.run_forever())
        await self.start_metrics()
        self._track_active_clusters()
        self.start_watching()
        period = self.orphan_check_period
        sweep = self._every(
            period, self._sweep_orphans, "sweeping orphan jobs", first_at_start=True
        )
        self.task_pool.spawn(sweep)
        self.task_pool.spawn(
            self._every(self.held_retry_period, self.release_all_held, "submitting held workers")
        )
        # Everything above is set before the first await: reconcilers may already be running.
        if self.use_job_arrays:
            self._worker_submissions.max_batch = await self._array_limit()
        await self._reconcile_with_slurm()

    def _make_job_parts(self):
        """The parts that render, submit, track, batch and sweep jobs."""
        self.scripts = JobScripts(
            template_environment([self.template_path]),
            self.job_name_prefix,
            self.job_marker,
            self.default_host,
            self.listen_host,
            self.worker_walltime_margin,
        )
        run = self.health.observing(self.runner.run)  # /api/health reads what polls learn
        self.tracker = JobTracker(run, squeue=self.squeue, sacct=self.sacct)
        self.jobs = JobControl(
            self.runner,
            self.tracker,
            self.task_pool.spawn,
            sbatch=self.sbatch,
            scancel=self.scancel,
            retry_timeout=self.slurm_retry_timeout,
            grace_period=self.cancel_grace_period,
            log=self.log,
            cancelled=self.release_held_soon,
        )
        self.owners = JobOwners()
        self.orphans = OrphanSweep(
            self.runner,
            self.jobs,
            self.owners,
            squeue=self.squeue,
            job_names=self.job_names,
            marker=self.job_marker,
            may_be_ours=self._may_start_clusters,
            min_age=self.orphan_min_age,
            log=self.log,
        )
        self._worker_submissions = Coalescer(
            self._submit_workers,
            unclaimed=self._cancel_unclaimed,
            window=self.batch_window,
            max_batch=self.max_array_size if self.use_job_arrays else 1,
        )
        self._cancellations = Coalescer(self.jobs.cancel_batch, window=self.batch_window)

    def _track_active_clusters(self):
        """Track the jobs of the clusters the database says are active (after a restart)."""
        for cluster in self.db.active_clusters():
            self._track(cluster.state.get("job_id"), cluster)
            for worker in cluster.workers.values():
                if worker.status < JobStatus.STOPPED:
                    self._track(worker.state.get("job_id"), cluster, worker)

    async def _reconcile_with_slurm(self):
        """Jobs may have ended while the gateway was down: learn their fate before the API
        serves anyone, so nobody connects to a cluster whose scheduler is gone. Bounded, as
        SLURM itself may be down; the poll loop then catches up."""
        if not self.owners:
            return
        try:
            await asyncio.wait_for(self.poll_slurm(), RECONCILE_AT_START_TIMEOUT)
        except Exception as exc:
            self.log.warning("Could not check the clusters' jobs in SLURM at start: %r", exc)

    async def _array_limit(self) -> int:
        result = await self.runner.run([self.scontrol, "show", "config"])
        slurm_max = parse_max_array_size(result.stdout) if result.ok else None
        if slurm_max is None:
            self.log.warning(
                "Could not read MaxArraySize from SLURM; arrays of at most %d", self.max_array_size
            )
            return self.max_array_size
        return max(1, min(self.max_array_size, slurm_max - 1))

    def _track(self, job_id: str | None, cluster, worker=None):
        if job_id:
            self.tracker.track(job_id)
            self.owners.add(job_id, Owner(cluster.name, worker.name if worker else None))

    def _forget(self, job_ids: list[str]):
        self.tracker.forget(job_ids)
        self.owners.remove(job_ids)
        self.forget_watched(job_ids)

    def job_info(self, obj: Cluster | Worker) -> JobInfo | None:
        """What SLURM last said about a cluster's scheduler job or a worker's job."""
        job_id = obj.state.get("job_id")
        return self.tracker.get(job_id) if job_id else None

    def _may_start_clusters(self, username: str) -> bool:
        return user_problem(username, self.user_policy, service_uid=os.getuid()) is None

    # -- watching SLURM ----------------------------------------------------------------------

    async def _every(self, period: float, check, what: str, *, first_at_start: bool = False):
        if not first_at_start:
            await asyncio.sleep(period)
        while True:
            try:
                await check()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.warning("Error while %s", what, exc_info=True)
            await asyncio.sleep(period)

    async def _sweep_orphans(self):
        statuses = list(ClusterStatus)
        await self.orphans.sweep(
            sorted({c.username for c in self.db.list_clusters(statuses=statuses)})
        )

    async def do_check_clusters(self, clusters: list[Cluster]) -> list[bool]:
        return [is_alive(self.job_info(c)) for c in clusters]

    async def do_check_workers(self, workers: list[Worker]) -> list[bool]:
        # Jobs that ended through no fault of their own are replaced by poll_slurm instead,
        # so that they do not count against the cluster's failure limit.
        return [is_alive(self.job_info(w)) for w in workers]

    # -- clusters --------------------------------------------------------------------------

    async def do_start_cluster(self, cluster: Cluster) -> AsyncIterator[dict]:
        # Named by start time and chance, not by the cluster: a cluster's name is the key
        # to its dashboard, and stays out of every path (a log path shows in error messages,
        # `ps` and, where a site's template puts it there, in `scontrol show job`).
        user_directory = user_log_directory(cluster.config["log_directory"], cluster.username)
        subdirectory = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
        state = {"log_directory": f"{user_directory}/{subdirectory}"}
        try:
            await self.as_user.prepare_log_directory(
                cluster.username, user_directory, subdirectory, cluster.name
            )
            script = self._job_script(cluster, "scheduler", state["log_directory"])
            [job_id] = await self._submit(cluster, script)
        except Exception as exc:
            failure = start_failure(cluster.name, exc, PUBLIC_ERRORS)
            self.count_start_failure(exc, PUBLIC_ERRORS)
            self.db.update_cluster(cluster, state={**state, "failure": failure})
            raise
        self._track(job_id, cluster)
        self.watch_submitted([job_id])  # a job that fails at once is known at once
        self.log.info(
            "Cluster %s of user %s: scheduler job %s submitted",
            cluster.name,
            cluster.username,
            job_id,
        )
        yield {**state, "job_id": job_id}

    async def do_stop_cluster(self, cluster: Cluster) -> None:
        job_ids = [
            w.state["job_id"]
            for w in cluster.workers.values()
            if w.status < JobStatus.STOPPED and w.state.get("job_id")
        ]
        scheduler_job = cluster.state.get("job_id")
        if scheduler_job:
            job_ids.insert(0, scheduler_job)
        log_file = None
        reported_tail = self.reported_tails.get(scheduler_job or "")
        if cluster.target == JobStatus.FAILED and "failure" not in cluster.state:
            # The SLURM facts are recorded before the job's log is read (as the user, which
            # can be slow): a restarted gateway never does that work again.
            reason, log_file = await self._explain_failure(cluster)
            self._record(cluster, failure=reason)
        try:
            await self.jobs.cancel(cluster.username, job_ids)
        finally:
            self._forget(job_ids)
        if log_file:
            last_line = reported_tail or await self.as_user.last_log_line(
                cluster.username, log_file
            )
            if last_line:
                self._record(
                    cluster, failure=with_last_log_line(cluster.state["failure"], last_line)
                )
        if cluster.target == JobStatus.FAILED:
            self.log.warning("User %s: %s", cluster.username, cluster.state.get("failure"))

    async def _explain_failure(self, cluster) -> tuple[str, str | None]:
        job_id = cluster.state.get("job_id", "")
        if job_id:
            await self.tracker.poll([job_id])
        facts = ClusterFacts.of(cluster, self.worker_start_failure_limit)
        job = self.tracker.get(job_id) or JobInfo(job_id, state=UNKNOWN)
        self.count_failure(facts, job)
        return cluster_failure(facts, job, self.start_policy)

    def _recorded_failure(self, cluster_name: str) -> str | None:
        cluster = self.db.get_cluster(cluster_name)
        if cluster is None or cluster.status != JobStatus.FAILED:
            return None
        return (cluster.state or {}).get("failure") or (
            f"Cluster {cluster_name} failed; no SLURM details were recorded"
        )

    def _record(self, cluster, **state):
        self.db.update_cluster(cluster, state={**cluster.state, **state})

    # -- workers ---------------------------------------------------------------------------

    async def do_stop_worker(self, worker: Worker) -> None:
        job_id = worker.state.get("job_id")
        if not job_id:
            return
        if worker.target == JobStatus.FAILED:
            await self._record_lost_worker(worker, job_id)
        try:
            await self._cancellations.add(worker.cluster.username, job_id)
        finally:
            self._forget([job_id])

    async def _record_lost_worker(self, worker: Worker, job_id: str) -> None:
        """A worker that left its scheduler unasked: kept as the cluster's worker failure
        only if SLURM already said its job failed. Not asked now (a scheduler may list any
        number of its workers as closed: that must not cost a squeue each); what the
        tracker holds for a job still running may be minutes old, so it is not repeated.
        A worker that reached its ``--lifetime`` leaves this way and ends COMPLETED."""
        info = self.tracker.get(job_id) or JobInfo(job_id, state=UNKNOWN)
        if info.is_terminal and info.state != COMPLETED:
            self.record_worker_failure(worker.cluster, describe_job("worker", info))
        else:
            self.log.info(
                "Cluster %s: worker %s (job %s) left its scheduler",
                worker.cluster.name,
                worker.name,
                job_id,
            )

    def record_worker_failure(self, cluster: Cluster, text: str) -> None:
        """Keep a worker's failure as the cluster's latest (shown if the cluster fails)."""
        self.log.warning("Cluster %s: %s", cluster.name, text)
        self._record(cluster, last_worker_failure=text)

    # -- submitting -------------------------------------------------------------------------

    async def _submit(self, cluster, script: str, tasks: int = 1) -> list[str]:
        user_directory = user_log_directory(cluster.config["log_directory"], cluster.username)
        uid = pwd.getpwnam(cluster.username).pw_uid
        return await self.jobs.submit(cluster.username, uid, script, user_directory, tasks)

    def _job_script(self, cluster, role: str, log_directory: str, workers: list = ()) -> str:
        environment = self.get_env(cluster)
        if role == "scheduler":
            command = self.get_scheduler_command(cluster)
            return self.scripts.scheduler(cluster, log_directory, command, environment)
        nthreads_memory = self.worker_nthreads_memory_limit_args(cluster)
        return self.scripts.workers(
            cluster, log_directory, workers, nthreads_memory, environment, time.time()
        )
