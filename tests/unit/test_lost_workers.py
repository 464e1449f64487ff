"""A worker that leaves its scheduler unasked: what the cluster keeps as its worker failure.

The stock heartbeat handler marks every worker that leaves its scheduler unasked FAILED,
including one that reached its ``--lifetime`` (our walltime-aware workers do, by design).
A job SLURM last saw running is not described (an idle gateway no longer polls running
jobs: the tracker's copy may say "RUNNING after 0:07") and not asked about either: a
scheduler may list all its workers as closed, and that must not cost a squeue each.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

from dask_gateway_server.backends.db_base import JobStatus

from slurm_gateway.backend import SlurmBackend
from slurm_gateway.slurm import COMPLETED, RUNNING, JobInfo


class Tracker:
    """A job tracker that knows ``job`` and must not be asked anything."""

    def __init__(self, job: JobInfo):
        self.jobs = {job.job_id: job}

    def get(self, job_id):
        return self.jobs.get(job_id)

    async def poll(self, only=None):
        raise AssertionError("a scheduler's heartbeat made the gateway ask SLURM")


class Cancellations:
    def __init__(self):
        self.cancelled = []

    async def add(self, user, job_id):
        self.cancelled.append((user, job_id))


def _stop_lost_worker(known: JobInfo) -> SimpleNamespace:
    recorded: list[str] = []
    backend = SimpleNamespace(
        tracker=Tracker(known),
        log=logging.getLogger("test"),
        _cancellations=Cancellations(),
        _forget=lambda ids: None,
        release_held_soon=lambda user: None,
        record_worker_failure=lambda cluster, text: recorded.append(text),
    )
    backend._record_lost_worker = lambda w, j: SlurmBackend._record_lost_worker(backend, w, j)
    cluster = SimpleNamespace(name="c1", username="alice")
    worker = SimpleNamespace(
        name="w1", cluster=cluster, target=JobStatus.FAILED, state={"job_id": known.job_id}
    )
    asyncio.run(SlurmBackend.do_stop_worker(backend, worker))
    return SimpleNamespace(recorded=recorded, backend=backend)


def test_a_worker_gone_while_slurm_was_last_seen_running_is_no_failure_and_not_described():
    # e.g. at its lifetime: the tracker's copy says "RUNNING on n3 after 0:07", minutes old
    done = _stop_lost_worker(JobInfo("42_1", state=RUNNING, nodes="n3", elapsed="0:07"))
    assert done.recorded == []
    assert done.backend._cancellations.cancelled == [("alice", "42_1")]


def test_a_worker_whose_job_slurm_said_failed_is_recorded_with_those_facts():
    known = JobInfo(
        "42_1", state="OUT_OF_MEMORY", exit_code="0:125", nodes="n3", elapsed="00:01:10"
    )
    done = _stop_lost_worker(known)
    assert len(done.recorded) == 1
    assert "OUT_OF_MEMORY" in done.recorded[0] and "00:01:10" in done.recorded[0]


def test_a_completed_worker_is_no_failure():
    done = _stop_lost_worker(JobInfo("42_1", state=COMPLETED, exit_code="0:0", accounted=True))
    assert done.recorded == []
