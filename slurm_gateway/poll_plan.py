"""When to ask SLURM about which jobs: only when something can have changed.

A running job that nobody suspects is not asked about: it tells the gateway itself when it
ends (the job script's end report), and the scheduler's heartbeats say it lives. SLURM is
asked about

- jobs still queued, every ``pending`` period, until they run (their start time counts for
  the workers' start timeouts, their pending reason for the users' error messages), except
  held ones (:data:`HELD_REASONS`): they cannot start until someone releases them, which
  no job reports, so the sweep notices it (and a released worker that starts shows up in
  its scheduler's heartbeat first);
- jobs suspected of ending (an end report, a running worker its scheduler's heartbeat no
  longer lists, a scheduler whose heartbeat is overdue (:func:`overdue_heartbeats`), a
  submission just made) at once and then :data:`FOLLOW_UPS` seconds
  later until SLURM says how they ended (every :data:`COMPLETING_PERIOD` seconds while
  SLURM is still ending them);
- every job, every ``sweep`` period: the safety net for ends that cannot be reported
  (SIGKILL, a node lost, the walltime reached while the gateway was away).

What users can trigger is bounded: any user can send end reports for her own jobs and
heartbeats leaving out her own workers. Each user's suspicions start their follow-ups
within a :class:`FollowUpBudget` (a burst of :data:`USER_BURST` at once, then one series
every :data:`USER_INTERVAL` seconds, later ones joining the next series), and no round
follows the last one by less than :data:`MIN_ROUND_GAP` seconds, whoever asked: a genuine
report is asked about at once, a flood of them costs slurmctld a few calls a second at most.

Pure: the caller passes the time and SLURM's last word on each job, and asks SLURM.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .slurm import COMPLETING, JobInfo

#: Seconds after a suspicion at which the job is asked about (until it is seen ended).
FOLLOW_UPS = (0.0, 1.0, 3.0, 7.0)
#: Seconds between questions about a suspected job that SLURM is still ending.
COMPLETING_PERIOD = 2.0
#: SLURM's reasons for a queued job that waits to be released (``scontrol release``).
HELD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin"})
#: Seconds after a suspicion during which the same job is not suspected again: a job a user
#: keeps reporting, or a worker her scheduler keeps leaving out, costs slurmctld little.
SUSPICION_COOLDOWN = 30.0
#: Heartbeat periods without a heartbeat after which a scheduler's job is asked about: a
#: heartbeat missed by half a period. Below the stock timeout (two periods), which fails the
#: cluster whatever SLURM says; a false alarm costs the follow-ups' squeues of one job.
OVERDUE_PERIODS = 1.5
#: Seconds between two rounds of questions at least: what arrives meanwhile joins the next.
MIN_ROUND_GAP = 0.25
#: Series of follow-ups a user's suspicions start at once, then one per USER_INTERVAL seconds.
USER_BURST = 5
USER_INTERVAL = 2.0


def awaits_start(info: JobInfo) -> bool:
    """Queued and free to start (not held): its start is watched every pending period."""
    return info.is_queued and info.reason not in HELD_REASONS


class FollowUpBudget:
    """When the follow-ups of a user's suspicion may start: at once within a burst of
    ``burst``, then one series every ``interval`` seconds (a token bucket kept as the
    time its tokens are all back); suspicions arriving while one waits join it."""

    def __init__(self, burst: int = USER_BURST, interval: float = USER_INTERVAL):
        self.burst = burst
        self.interval = interval
        self._full_at: dict[str, float] = {}  # when each user's budget is whole again
        self._waiting: dict[str, float] = {}  # the start a user's later suspicions join

    def start_at(self, user: str, now: float) -> float:
        """When follow-ups of ``user``'s suspicion made at ``now`` start (``now`` or later)."""
        waiting = self._waiting.get(user, -1.0)
        if waiting > now:
            return waiting
        full_at = max(self._full_at.get(user, now), now)
        start = max(now, full_at - self.burst * self.interval + self.interval)
        self._full_at[user] = max(full_at, start) + self.interval
        if start > now:
            self._waiting[user] = start
        if len(self._full_at) > 1024:  # users whose budget is whole again are forgotten
            for name in [u for u, t in self._full_at.items() if t <= now]:
                self._full_at.pop(name)
                self._waiting.pop(name, None)
        return start


@dataclass(frozen=True)
class Overdue:
    """Schedulers whose heartbeat is overdue, and when the next one will be (None: none)."""

    job_ids: list[str]
    next_at: float | None


def overdue_heartbeats(last_heard: Mapping[str, float], now: float, period: float) -> Overdue:
    """The scheduler jobs (by id, with the time of their cluster's last heartbeat, in the
    clock of ``now``) not heard from for :data:`OVERDUE_PERIODS` heartbeat ``period``."""
    after = OVERDUE_PERIODS * period
    overdue = sorted(j for j, heard in last_heard.items() if now - heard >= after)
    upcoming = [heard + after for j, heard in last_heard.items() if now - heard < after]
    return Overdue(overdue, min(upcoming, default=None))


@dataclass(frozen=True)
class PollPeriods:
    """The settings: seconds between polls of queued jobs, and between safety sweeps."""

    pending: float
    sweep: float


@dataclass(frozen=True)
class PollRound:
    """One decision: which jobs to ask about now (None: every job) and when to look again."""

    job_ids: list[str] | None
    wake_at: float


class PollPlan:
    """The follow-ups and periods, in a clock the caller gives (``time.monotonic()``)."""

    def __init__(self, periods: PollPeriods, now: float):
        self.periods = periods
        self._next_sweep = now + periods.sweep
        self._next_pending = now + periods.pending
        self._follow_ups: dict[str, list[float]] = {}
        self._suspected_at: dict[str, float] = {}
        self._reported: set[str] = set()
        self._budget = FollowUpBudget()
        self._last_asked = -MIN_ROUND_GAP

    def suspect(self, job_ids: Iterable[str], now: float, user: str | None = None) -> list[str]:
        """Ask about these jobs now and at the follow-ups (not again within
        :data:`SUSPICION_COOLDOWN` seconds); those newly suspected. A suspicion ``user``
        caused (her report, her scheduler's heartbeat) starts within her
        :class:`FollowUpBudget`."""
        fresh = [
            job_id
            for job_id in job_ids
            if now - self._suspected_at.get(job_id, -SUSPICION_COOLDOWN) >= SUSPICION_COOLDOWN
        ]
        if not fresh:
            return fresh
        start = now if user is None else self._budget.start_at(user, now)
        for job_id in fresh:
            self._suspected_at[job_id] = now
            self._follow_ups[job_id] = [start + delay for delay in FOLLOW_UPS]
        return fresh

    def submitted(self, job_ids: Iterable[str], now: float) -> None:
        """Jobs just submitted (one that fails at once is known at once): asked about now
        and at the follow-ups, without a cooldown: a suspicion soon after is acted on."""
        for job_id in job_ids:
            self._follow_ups[job_id] = [now + delay for delay in FOLLOW_UPS]

    def reported(self, job_id: str, now: float, user: str | None = None) -> bool:
        """The job's own end report: ask about it now and at the follow-ups even if it was
        suspected within the cooldown (e.g. at its submission, seconds before); once per
        job, so that repeated reports cost nothing more. Whether this report was the first."""
        if job_id in self._reported:
            return False
        self._reported.add(job_id)
        self._suspected_at.pop(job_id, None)
        self.suspect([job_id], now, user)
        return True

    def forget(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            self._follow_ups.pop(job_id, None)
            self._suspected_at.pop(job_id, None)
            self._reported.discard(job_id)

    def next_round(self, now: float, jobs: Mapping[str, JobInfo]) -> PollRound:
        """The jobs to ask about now, among ``jobs`` (the open ones, with what SLURM last
        said of them); their follow-ups are consumed. None within :data:`MIN_ROUND_GAP`
        seconds of the last round that asked."""
        for job_id in [j for j in self._follow_ups if j not in jobs or jobs[j].is_terminal]:
            del self._follow_ups[job_id]
        if now < self._last_asked + MIN_ROUND_GAP:
            return PollRound([], self.wake_at(jobs))
        if now >= self._next_sweep:
            self._next_sweep = now + self.periods.sweep
            self._next_pending = now + self.periods.pending
            self._follow_ups = {
                j: [t for t in times if t > now] for j, times in self._follow_ups.items()
            }
            self._last_asked = now
            return PollRound(None, self.wake_at(jobs))
        due = set()
        for job_id, times in self._follow_ups.items():
            if times and times[0] <= now:
                due.add(job_id)
                times[:] = [t for t in times if t > now]
                if not times and jobs[job_id].state == COMPLETING:
                    times.append(now + COMPLETING_PERIOD)
        if now >= self._next_pending:
            self._next_pending = now + self.periods.pending
            due.update(j for j, info in jobs.items() if awaits_start(info))
        self._follow_ups = {j: times for j, times in self._follow_ups.items() if times}
        if due:
            self._last_asked = now
        return PollRound(sorted(due), self.wake_at(jobs))

    def wake_at(self, jobs: Mapping[str, JobInfo]) -> float:
        """When the next round is due (the earliest of sweep, pending poll, follow-up; not
        within :data:`MIN_ROUND_GAP` seconds of the last round that asked)."""
        times = [self._next_sweep]
        if any(awaits_start(info) for info in jobs.values()):
            times.append(self._next_pending)
        times.extend(ts[0] for ts in self._follow_ups.values() if ts)
        return max(min(times), self._last_asked + MIN_ROUND_GAP)
