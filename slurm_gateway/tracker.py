"""Job state tracking: one ``squeue`` call per poll, for every job of every cluster or for
the few that :mod:`~slurm_gateway.poll_plan` says may have changed.

The tracker keeps the last thing SLURM said about each job the gateway submitted.
A poll runs a single ``squeue`` over the gateway's own jobs (selected by job id:
nobody else's jobs, whatever their names, can enlarge or alter the answer) and one
``sacct`` for the jobs
that have just left the queue, to learn their exit code and final state. When
SLURM cannot be asked (``squeue`` fails, slurmctld is down), nothing changes:
jobs keep their last known state, and are never reported as failed for it. Whether SLURM
and accounting answer is not the tracker's to record: its ``run`` is observed by the
gateway's one :class:`~slurm_gateway.availability.Availability` (which logs outages, and
which ``/api/health`` and the metrics read).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace

from .slurm import (
    COMPLETING,
    RUNNING,
    UNKNOWN,
    JobInfo,
    parse_sacct,
    parse_squeue,
    sacct_command,
    squeue_command,
)
from .transport import CommandResult

#: Polls after which a job that left the queue without an accounting record is left as it is.
ACCOUNTING_ATTEMPTS = 5


class JobTracker:
    """The last known :class:`~slurm_gateway.slurm.JobInfo` of each tracked job."""

    def __init__(
        self,
        run: Callable[[list[str]], Awaitable[CommandResult]],
        *,
        squeue: str = "squeue",
        sacct: str = "sacct",
    ):
        self._run = run
        self._squeue = squeue
        self._sacct = sacct
        self._jobs: dict[str, JobInfo] = {}
        self._ended: dict[str, None] = {}  # ids of jobs seen ending, in order, not yet taken
        self._accounting_attempts: dict[str, int] = {}
        self._lock = asyncio.Lock()
        #: Called with a job's JobInfo when a poll first sees it RUNNING (the metrics).
        self.on_running: Callable[[JobInfo], None] | None = None

    def track(self, job_id: str) -> None:
        self._jobs.setdefault(job_id, JobInfo(job_id))

    def forget(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            self._jobs.pop(job_id, None)
            self._ended.pop(job_id, None)
            self._accounting_attempts.pop(job_id, None)

    def take_ended(self) -> list[JobInfo]:
        """The jobs seen ending since the last call, whichever poll saw them; each once."""
        ended, self._ended = [self._jobs[j] for j in self._ended if j in self._jobs], {}
        return ended

    def get(self, job_id: str) -> JobInfo | None:
        return self._jobs.get(job_id)

    def open_jobs(self) -> dict[str, JobInfo]:
        """The tracked jobs whose final state is not known yet."""
        return {j: info for j, info in self._jobs.items() if not info.accounted}

    async def poll(self, only: Iterable[str] | None = None) -> None:
        """Refresh every tracked job (or those of ``only``); jobs seen ending wait in
        :meth:`take_ended`. Without such jobs nothing is asked of SLURM."""
        async with self._lock:
            await self._poll(None if only is None else set(only))

    async def _poll(self, only: set[str] | None) -> None:
        open_ids = [j for j in self.open_jobs() if only is None or j in only]
        if not open_ids:
            return
        result = await self._run(squeue_command(open_ids, self._squeue))
        if not result.ok:
            return  # jobs keep their last known states

        before = {j: self._jobs[j] for j in open_ids}
        queued = parse_squeue(result.stdout)
        left_queue = []
        for job_id in open_ids:
            seen = queued.get(job_id)
            if seen is not None:
                info = self._jobs[job_id].merged(seen)
                if info.state == RUNNING and info.running_since is None:
                    info = replace(info, running_since=time.time())
                    if self.on_running is not None:
                        self.on_running(info)
                self._jobs[job_id] = info
            # COMPLETING jobs are ending: sacct already knows how (e.g. CANCELLED by uid).
            if seen is None or seen.is_terminal or seen.state == COMPLETING:
                left_queue.append(job_id)
        if left_queue:
            await self._account(left_queue, missing=set(left_queue) - set(queued))
        for job_id, was in before.items():
            now = self._jobs.get(job_id)  # None if forgotten while sacct was asked
            if now is not None and now.is_terminal and not was.is_terminal:
                self._ended[job_id] = None

    async def _account(self, job_ids: list[str], missing: set[str]) -> None:
        """Final states from ``sacct``; jobs neither queued nor accounted become UNKNOWN.

        While accounting is down (slurmdbd), jobs keep what squeue last said of them, and
        are asked about again at the next poll."""
        result = await self._run(sacct_command(job_ids, self._sacct))
        if not result.ok:
            return  # asked again at the next poll
        accounted = parse_sacct(result.stdout)
        for job_id in job_ids:
            if job_id not in self._jobs:
                continue
            info = accounted.get(job_id)
            if info is not None:
                self._jobs[job_id] = self._jobs[job_id].merged(info)
                continue
            if job_id in missing:
                self._jobs[job_id] = self._jobs[job_id].merged(JobInfo(job_id, state=UNKNOWN))
            attempts = self._accounting_attempts.get(job_id, 0) + 1
            self._accounting_attempts[job_id] = attempts
            # Give up on a record only for a job that left the queue or ended in it: one
            # still COMPLETING stays open, so that squeue says how it ended.
            if attempts >= ACCOUNTING_ATTEMPTS and (
                job_id in missing or self._jobs[job_id].is_terminal
            ):
                self._jobs[job_id] = replace(self._jobs[job_id], accounted=True)
