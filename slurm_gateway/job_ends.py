"""The backend's part that learns when jobs end: the poll loop that follows the
:class:`~slurm_gateway.poll_plan.PollPlan`, the jobs' end reports
(:mod:`~slurm_gateway.end_reports`), workers missing from the scheduler's heartbeat and
schedulers whose heartbeat is overdue, and what is done when a job is seen ending (the
cluster of a dead scheduler fails with SLURM's facts, a dead worker is replaced).

The backend provides ``db``, ``queue``, ``log``, ``tracker``, ``owners``, ``task_pool``,
``stop_cluster`` and the settings ``slurm_pending_period``, ``slurm_sweep_period`` and
``cluster_heartbeat_period``.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from dask_gateway_server.backends.db_base import Cluster, JobStatus, Worker

from .end_reports import EndReport, job_end_handler, tail_for_message
from .poll_plan import PollPeriods, PollPlan, overdue_heartbeats
from .slurm import NOT_THE_JOBS_FAULT, describe_job

#: The route jobs report their end to (``DASK_GATEWAY_API_URL`` ends with ``/api``).
JOB_END_ROUTE = "/api/v1/clusters/{cluster_name}/job-end"


class JobEnds:
    """Watching the clusters' jobs for their end (see the module docstring)."""

    def add_job_end_route(self, app: web.Application) -> None:
        # Added before the stock setup makes the database: looked up at each request.
        handler = job_end_handler(lambda name: self.db.get_cluster(name), self.job_ended)
        app.router.add_post(JOB_END_ROUTE, handler)

    def start_watching(self) -> None:
        periods = PollPeriods(self.slurm_pending_period, self.slurm_sweep_period)
        self.poll_plan = PollPlan(periods, time.monotonic())
        self._wake_watch = asyncio.Event()
        #: What the jobs reported of their log at their end, by job id, until forgotten.
        self.reported_tails: dict[str, str] = {}
        self.task_pool.spawn(self._watch_forever())

    def suspect(self, job_ids: list[str], user: str | None = None) -> list[str]:
        """Ask SLURM about these jobs now and at the follow-ups (within ``user``'s budget
        when she caused the suspicion: see :mod:`~slurm_gateway.poll_plan`); those newly
        suspected."""
        fresh = self.poll_plan.suspect(job_ids, time.monotonic(), user)
        if fresh:
            self._wake_watch.set()
        return fresh

    def forget_watched(self, job_ids: list[str]) -> None:
        self.poll_plan.forget(job_ids)
        for job_id in job_ids:
            self.reported_tails.pop(job_id, None)

    def watch_submitted(self, job_ids: list[str]) -> None:
        """Jobs just submitted: SLURM is asked about them now and at the follow-ups."""
        self.poll_plan.submitted(job_ids, time.monotonic())
        self._wake_watch.set()

    def workers_missing(self, workers: list[Worker]) -> None:
        """Running workers their scheduler's heartbeat no longer lists: they may have
        ended, so SLURM is asked about their jobs (``poll_slurm`` replaces them if so)."""
        fresh = self.suspect(
            [w.state["job_id"] for w in workers if w.state.get("job_id")],
            workers[0].cluster.username if workers else None,
        )
        if fresh:
            self.log.info("Worker job(s) %s missing from the heartbeat: asking SLURM", fresh)

    def heartbeat_started(self) -> None:
        """A cluster's first heartbeat: its heartbeats are watched from now on."""
        self._wake_watch.set()

    def _suspect_overdue(self) -> float | None:
        """Suspect the scheduler jobs of running clusters not heard from for a while; when
        (monotonic) the next one will be overdue."""
        heard = [
            c
            for c in self.db.active_clusters()
            if c.status == c.target == JobStatus.RUNNING  # a stopping one is not heard
            and c.last_heartbeat
            and c.state.get("job_id")
        ]
        last_heard = {c.state["job_id"]: c.last_heartbeat / 1000 for c in heard}
        users = {c.state["job_id"]: c.username for c in heard}
        wall, now = time.time(), time.monotonic()
        overdue = overdue_heartbeats(last_heard, wall, self.cluster_heartbeat_period)
        fresh = []  # a scheduler that heartbeats late on purpose costs its user's budget
        for job_id in overdue.job_ids:
            fresh += self.poll_plan.suspect([job_id], now, users[job_id])
        if fresh:
            self.log.info("Heartbeat overdue: asking SLURM about scheduler job(s) %s", fresh)
        return None if overdue.next_at is None else now + overdue.next_at - wall

    async def job_ended(self, cluster: Cluster, report: EndReport) -> None:
        """A job of ``cluster`` says it ended: ask SLURM about it now."""
        if self.tracker.get(report.job_id) is None:
            return  # already forgotten: the gateway itself stopped it
        if not self.poll_plan.reported(report.job_id, time.monotonic(), cluster.username):
            return  # a repeated report: neither logged nor asked about again
        self.log.info(
            "Cluster %s: %s job %s reports its end (exit status %d%s)",
            cluster.name,
            report.role,
            report.job_id,
            report.exit_status,
            ", asked to stop" if report.stop_asked else "",
        )
        self.reported_tails[report.job_id] = tail_for_message(report.log_tail)
        self._wake_watch.set()

    async def _watch_forever(self) -> None:
        while True:
            overdue_at = self._suspect_overdue()
            plan_round = self.poll_plan.next_round(time.monotonic(), self.tracker.open_jobs())
            if plan_round.job_ids is None or plan_round.job_ids:
                try:
                    await self.poll_slurm(plan_round.job_ids)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.log.warning("Error while polling SLURM", exc_info=True)
            self._wake_watch.clear()
            wake_at = self.poll_plan.wake_at(self.tracker.open_jobs())
            if overdue_at is not None:
                wake_at = min(wake_at, overdue_at)
            try:
                await asyncio.wait_for(
                    self._wake_watch.wait(), max(0.0, wake_at - time.monotonic())
                )
            except TimeoutError:
                pass

    async def poll_slurm(self, only: list[str] | None = None) -> None:
        """Ask SLURM about the tracked jobs (or ``only`` these), and act on their ends."""
        await self.tracker.poll(only)
        ended = self.tracker.take_ended()
        if ended:
            self.release_shared_held_soon()  # a limit shared with their users may fit more
        for info in ended:
            owner = self.owners.get(info.job_id)
            cluster = self.db.get_cluster(owner.cluster) if owner else None
            if cluster is None:
                continue
            self.release_held_soon(cluster.username)  # SLURM may take more of their jobs now
            if cluster.target > JobStatus.RUNNING:
                continue
            if owner.worker is None:
                self.log.info("Scheduler job %s of cluster %s ended", info.job_id, cluster.name)
                await self.stop_cluster(cluster.name, failed=True)
                continue
            worker = cluster.workers.get(owner.worker)
            if worker is None or worker.target != JobStatus.RUNNING:
                continue
            # A worker that never connected is left to the stock start-failure check,
            # which counts it against the cluster's limit; SLURM's own ends never count.
            if info.state in NOT_THE_JOBS_FAULT or worker.status == JobStatus.RUNNING:
                self.log.info(
                    "Cluster %s: %s; replacing it (not counted as a failure)",
                    cluster.name,
                    describe_job("worker", info),
                )
                self.db.update_worker(worker, target=JobStatus.FAILED)
                self.queue.put(worker)
