"""Which job belongs to which cluster, and the orphan sweep: jobs this gateway submitted
that no active cluster owns (e.g. submitted just before a crash) are cancelled.

Any user can name a job like ours and give it our marker as a comment, so a job named like
ours is only cancelled once SLURM confirms, for that job id alone, its owner, its name and
the marker; a job SLURM says is not ours is never asked about again."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from .jobs import JobControl, SlurmError
from .slurm import JobInfo, confirms_marker, job_marker_command, named_jobs_command, parse_squeue
from .transport import CommandRunner

# Jobs checked one by one in SLURM per orphan sweep (the rest wait for the next sweep).
MAX_ORPHAN_CHECKS = 50


@dataclass(frozen=True)
class Owner:
    """The cluster (and worker, None for the scheduler) a job was submitted for."""

    cluster: str
    worker: str | None = None


@dataclass
class JobOwners:
    """The owner of every job the gateway tracks."""

    owners: dict[str, Owner] = field(default_factory=dict)

    def add(self, job_id: str, owner: Owner) -> None:
        self.owners[job_id] = owner

    def remove(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            self.owners.pop(job_id, None)

    def get(self, job_id: str) -> Owner | None:
        return self.owners.get(job_id)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self.owners

    def __bool__(self) -> bool:
        return bool(self.owners)


def slurm_epoch(slurm_time: str, now: float) -> float:
    """Seconds since the epoch of a SLURM timestamp (local time); ``now`` if unreadable."""
    try:
        return datetime.fromisoformat(slurm_time).timestamp()
    except ValueError:
        return now


def orphan_candidates(
    seen: dict[str, JobInfo],
    skip: Callable[[str], bool],
    now: float,
    min_age: float,
) -> list[JobInfo]:
    """Jobs named like ours that may be orphans: active, old enough (a job in the middle of
    being submitted and recorded is not one), and not to be skipped (owned, being stopped,
    known not to be ours)."""
    return [
        info
        for job_id, info in seen.items()
        if info.is_active
        and not skip(job_id)
        and now - slurm_epoch(info.submit_time, now) > min_age
    ]


class OrphanSweep:
    """Finds and cancels this gateway's orphan jobs (see the module's docstring)."""

    def __init__(
        self,
        runner: CommandRunner,
        jobs: JobControl,
        owners: JobOwners,
        *,
        squeue: str,
        job_names: list[str],
        marker: str,
        may_be_ours: Callable[[str], bool],
        min_age: float,
        log: logging.Logger,
    ):
        self.runner = runner
        self.jobs = jobs
        self.owners = owners
        self.squeue = squeue
        self.job_names = job_names
        self.marker = marker
        self.may_be_ours = may_be_ours
        self.min_age = min_age
        self.log = log
        #: Jobs named like ours that SLURM said are not ours (another user's or gateway's).
        self.not_ours: set[str] = set()

    def _skip(self, job_id: str) -> bool:
        return job_id in self.owners or job_id in self.jobs.stopping or job_id in self.not_ours

    async def sweep(self, users: list[str]) -> None:
        """Cancel, as their owners, the orphans among the jobs of ``users`` (the users who
        have had a cluster here: an orphan is a job submitted for a cluster but not
        recorded); at most ``MAX_ORPHAN_CHECKS`` are confirmed per sweep."""
        if not users:
            return
        result = await self.runner.run(named_jobs_command(self.job_names, users, self.squeue))
        if not result.ok:
            self.log.warning("Orphan check skipped: %s", result.summary())
            return
        seen = parse_squeue(result.stdout)
        self.not_ours &= seen.keys()  # forget jobs that are gone
        orphans: dict[str, list[str]] = {}
        candidates = orphan_candidates(seen, self._skip, time.time(), self.min_age)
        for info in candidates[:MAX_ORPHAN_CHECKS]:
            ours = await self._is_ours(info.job_id, info.user)
            if ours:
                orphans.setdefault(info.user, []).append(info.job_id)
            elif ours is False:
                self.not_ours.add(info.job_id)
                self.log.info(
                    "Job %s of user %s has the gateway's job name but not its marker; left alone",
                    info.job_id,
                    info.user,
                )
        for user, job_ids in orphans.items():
            await self._cancel(user, job_ids)

    async def _cancel(self, user: str, job_ids: list[str]) -> None:
        self.log.warning(
            "Cancelling orphan jobs of user %s (no active cluster owns them): %s",
            user,
            " ".join(job_ids),
        )
        try:
            await self.jobs.cancel(user, job_ids)
        except SlurmError as exc:
            self.log.warning("Could not cancel orphan jobs of user %s: %s", user, exc)

    async def _is_ours(self, job_id: str, user: str) -> bool | None:
        """Whether SLURM confirms the job as one of ours (None: SLURM could not say)."""
        if not self.may_be_ours(user):
            return False  # never a job this gateway could have submitted
        result = await self.runner.run(job_marker_command(job_id, self.job_names, self.squeue))
        if not result.ok:
            return None
        return confirms_marker(result.stdout, job_id, user, self.marker)
