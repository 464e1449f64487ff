"""Submitting and ending SLURM jobs as their user: retries while slurmctld is away, a grace
period for running jobs, and cancellations that are never forgotten."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine

from .as_user import UserError
from .slurm import (
    parse_sbatch_job_ids,
    sbatch_command,
    scancel_command,
    slurm_unreachable,
    terminate_command,
)
from .tracker import JobTracker
from .transport import CommandRunner
from .userfs import directory_problem

# Seconds between attempts while slurmctld does not answer: first, and at most.
SUBMIT_RETRY_DELAYS = (1.0, 10.0)
CANCEL_RETRY_DELAYS = (2.0, 30.0)


class SlurmError(Exception):
    """A SLURM command failed; the message carries what SLURM said."""


class JobControl:
    """Submits and ends jobs as their user through the command runner.

    ``spawn`` runs a coroutine in the background (the backend's task pool): the end of a
    grace period and cancellations retried until slurmctld answers outlive the request."""

    def __init__(
        self,
        runner: CommandRunner,
        tracker: JobTracker,
        spawn: Callable[[Coroutine], object],
        *,
        sbatch: str,
        scancel: str,
        retry_timeout: float,
        grace_period: float,
        log: logging.Logger,
        cancelled: Callable[[str], None] = lambda username: None,
    ):
        self.runner = runner
        self.tracker = tracker
        self.spawn = spawn
        self.sbatch = sbatch
        self.scancel = scancel
        self.retry_timeout = retry_timeout
        self.grace_period = grace_period
        self.log = log
        #: Called with the user's name once jobs of hers are cancelled (their places under
        #: her SLURM limits are free): at once for queued jobs, after the grace period for
        #: running ones.
        self.cancelled = cancelled
        #: Jobs sent SIGTERM and given their grace period before being cancelled.
        self.stopping: set[str] = set()

    async def submit(
        self, username: str, uid: int, script: str, user_directory: str, tasks: int = 1
    ) -> list[str]:
        """Submit a job (or a job array of ``tasks`` tasks) as the user; return the job ids.

        Before each submission the user's log directory (``user_directory``) is checked
        again: the job's output must go where nobody else can redirect it. While slurmctld
        does not answer, retry for ``retry_timeout`` seconds."""
        problem = directory_problem(user_directory, uid)
        if problem:
            raise UserError(f"nothing was submitted: {problem}")
        deadline = time.monotonic() + self.retry_timeout
        delay, longest = SUBMIT_RETRY_DELAYS
        while True:
            result = await self.runner.run(
                sbatch_command(self.sbatch), user=username, stdin=script.encode()
            )
            if result.ok:
                return parse_sbatch_job_ids(result.stdout, tasks)
            if not slurm_unreachable(result.stderr):
                raise SlurmError(f"SLURM refused the job: {result.summary()}")
            if time.monotonic() + delay > deadline:
                raise SlurmError(
                    f"SLURM unavailable for {self.retry_timeout:.0f} s "
                    f"(slurmctld does not answer): {result.summary()}"
                )
            self.log.warning("SLURM unavailable, retrying sbatch in %.0f s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)

    async def cancel(self, username: str, job_ids: list[str]) -> None:
        """End jobs: running ones get SIGTERM, then are cancelled after the grace period if
        they are still there; the others are cancelled at once."""
        running = [j for j in job_ids if (info := self.tracker.get(j)) and info.is_running]
        if running:
            result = await self.runner.run(terminate_command(running, self.scancel), user=username)
            if result.ok:
                self.log.info("Sent SIGTERM to jobs of user %s: %s", username, " ".join(running))
                # Not orphans meanwhile: the orphan sweep would cut their grace period short.
                self.stopping.update(running)
                self.spawn(self._cancel_after_grace(username, running))
                job_ids = [j for j in job_ids if j not in running]
        if await self._scancel(username, job_ids):
            self._tell_cancelled(username)

    async def cancel_batch(self, username: str, job_ids: list[str]) -> list[None]:
        """:meth:`cancel` for a :class:`~slurm_gateway.batching.Coalescer` (one result each)."""
        await self.cancel(username, job_ids)
        return [None] * len(job_ids)

    async def _cancel_after_grace(self, username: str, job_ids: list[str]) -> None:
        # Jobs that already ended make scancel complain, which _scancel ignores.
        try:
            await asyncio.sleep(self.grace_period)
            if await self._scancel(username, job_ids):
                self._tell_cancelled(username)
        finally:
            self.stopping.difference_update(job_ids)

    def _tell_cancelled(self, username: str) -> None:
        try:
            self.cancelled(username)
        except Exception:  # the jobs are cancelled: that must not read as a failure
            self.log.warning("After cancelling jobs of user %s", username, exc_info=True)

    async def _scancel(self, username: str, job_ids: list[str]) -> bool:
        """Cancel jobs; whether SLURM has them cancelled now (not while slurmctld is away:
        then cancelling goes on in the background, and tells :attr:`cancelled` when done)."""
        if not job_ids:
            return False
        result = await self.runner.run(scancel_command(job_ids, self.scancel), user=username)
        if result.ok:
            self.log.info("Cancelled jobs of user %s: %s", username, " ".join(job_ids))
        elif slurm_unreachable(result.stderr):
            # Never forget a job to cancel because slurmctld is away: retry until it answers.
            self.log.warning("SLURM unavailable, will retry cancelling %s", " ".join(job_ids))
            self.spawn(self._cancel_when_slurm_answers(username, job_ids))
            return False
        # scancel exits non-zero for jobs that already ended; that is what we wanted.
        elif "already" not in result.stderr and "Invalid job id" not in result.stderr:
            raise SlurmError(f"could not cancel jobs {', '.join(job_ids)}: {result.summary()}")
        return True

    async def _cancel_when_slurm_answers(self, username: str, job_ids: list[str]) -> None:
        delay, longest = CANCEL_RETRY_DELAYS
        while True:
            await asyncio.sleep(delay)
            result = await self.runner.run(scancel_command(job_ids, self.scancel), user=username)
            if not slurm_unreachable(result.stderr):
                self.log.info("Cancelled jobs of user %s: %s", username, " ".join(job_ids))
                self._tell_cancelled(username)
                return
            delay = min(delay * 2, longest)
