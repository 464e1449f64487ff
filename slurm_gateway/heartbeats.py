"""What a scheduler's heartbeat means for its cluster's workers (pure; ``dgs_compat`` applies it).

The heartbeat lists the workers the scheduler has (``active_workers``), is retiring
(``closing_workers``) and has lost (``closed_workers``), and the number it wants (``count``).
As in dask-gateway-server's own handler: a listed worker not yet running is now running; a
lost one is stopped (failed if its end was not expected); workers still to start beyond the
count are stopped. Two things differ:

- **Scaling down drops what is furthest from running first**: workers not yet submitted,
  then those held in the gateway by a SLURM submit limit (they hold nothing in SLURM), then
  jobs queued in SLURM, then jobs SLURM started whose worker has not connected yet; newest
  first within each. (The stock handler stops them oldest first, queued jobs before held
  ones.) Running workers beyond the count are the scheduler's to retire (``closing``).
- **A running worker the heartbeat no longer lists at all** is *missing*: it may have ended
  without the scheduler saying so (a scheduler of another dask-gateway, or one that lost
  track), so SLURM is asked about its job (``poll_plan``). The stock handler fails an
  assertion on such a worker: the whole heartbeat is refused, every heartbeat after it too.
- **A worker held in the gateway is never taken as running** because a heartbeat lists it:
  it has no job, so no dask worker of that name can be connected (the stock handler would
  mark it running, and its job would never be submitted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dask_gateway_server.backends.db_base import JobStatus, Worker

from .slurm import JobInfo
from .submit_limits import is_held

#: Scale-down ranks: the lowest is stopped first.
NOT_SUBMITTED, HELD, QUEUED, STARTED = range(4)


def scale_down_rank(worker: Worker, job: JobInfo | None) -> int:
    """How far a worker not yet running is from running (``job``: SLURM's last word)."""
    if worker.status == JobStatus.CREATED:
        return NOT_SUBMITTED
    if is_held(worker.state):
        return HELD
    if job is None or job.is_queued:
        return QUEUED
    return STARTED


@dataclass
class HeartbeatReading:
    """What to do with a cluster's workers after a heartbeat."""

    newly_running: list[Worker] = field(default_factory=list)
    close_expected: list[Worker] = field(default_factory=list)
    #: Workers the scheduler lost, with their new target (STOPPED if expected, else FAILED).
    ended: list[tuple[Worker, JobStatus]] = field(default_factory=list)
    #: Workers not yet running that are beyond the requested count, in the order stopped.
    to_stop: list[Worker] = field(default_factory=list)
    #: Running workers the heartbeat does not list (their jobs are asked about).
    missing: list[Worker] = field(default_factory=list)


def _names(msg: dict, key: str) -> set[str]:
    return {name for name in msg.get(key) or () if isinstance(name, str)}


def read_heartbeat(
    workers: Iterable[Worker], msg: dict, count: int, rank: Callable[[Worker], int]
) -> HeartbeatReading:
    """The heartbeat ``msg`` asking for ``count`` workers, read against ``workers``
    (``rank``: :func:`scale_down_rank` of a worker, with its job)."""
    active = _names(msg, "active_workers")
    closing = _names(msg, "closing_workers")
    closed = _names(msg, "closed_workers")
    reading = HeartbeatReading()
    pending = []
    for worker in workers:
        if worker.status >= JobStatus.STOPPED:
            continue
        listed = worker.name in closing or worker.name in active
        if listed and not is_held(worker.state):
            if worker.status < JobStatus.RUNNING:
                reading.newly_running.append(worker)
            if worker.name in closing:
                reading.close_expected.append(worker)
        elif worker.name in closed:
            target = JobStatus.STOPPED if worker.close_expected else JobStatus.FAILED
            reading.ended.append((worker, target))
        elif worker.status < JobStatus.RUNNING:
            pending.append(worker)
        elif worker.target == JobStatus.RUNNING:
            reading.missing.append(worker)
    excess = len(active) + len(pending) - count
    if excess > 0:
        # Newest first within a rank: a stable sort of the newest-first list.
        by_rank = sorted(reversed(pending), key=rank)
        reading.to_stop = by_rank[:excess]
    return reading
