"""A worker that leaves its scheduler unasked: what the cluster keeps as its worker failure.

The stock heartbeat handler marks every worker that leaves its scheduler unasked FAILED,
including one that reached its ``--lifetime`` (our walltime-aware workers do, by design).
The facts recorded must be SLURM's now, not what a poll said minutes ago: an idle gateway
no longer polls running jobs, so the tracker's copy may say "RUNNING after 0:07".
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

from dask_gateway_server.backends.db_base import JobStatus

from slurm_gateway.backend import SlurmBackend
from slurm_gateway.slurm import COMPLETED, RUNNING, JobInfo


class Tracker:
    """A job tracker whose next poll finds the job in ``final``."""

    def __init__(self, job_id: str, final: JobInfo):
        self.jobs = {job_id: JobInfo(job_id, state=RUNNING, nodes="n3", elapsed="0:07")}
        self.final = final
        self.polled: list[list[str]] = []

    def get(self, job_id):
        return self.jobs.get(job_id)

    async def poll(self, only=None):
        self.polled.append(list(only))
        self.jobs[self.final.job_id] = self.final


class Cancellations:
    def __init__(self):
        self.cancelled = []

    async def add(self, user, job_id):
        self.cancelled.append((user, job_id))


def _stop_lost_worker(final: JobInfo) -> SimpleNamespace:
    recorded: list[str] = []
    backend = SimpleNamespace(
        tracker=Tracker("42_1", final),
        log=logging.getLogger("test"),
        _cancellations=Cancellations(),
        _forget=lambda ids: None,
        release_held_soon=lambda user: None,
        record_worker_failure=lambda cluster, text: recorded.append(text),
    )
    backend._record_lost_worker = lambda w, j: SlurmBackend._record_lost_worker(backend, w, j)
    cluster = SimpleNamespace(name="c1", username="alice")
    worker = SimpleNamespace(
        name="w1", cluster=cluster, target=JobStatus.FAILED, state={"job_id": "42_1"}
    )
    asyncio.run(SlurmBackend.do_stop_worker(backend, worker))
    return SimpleNamespace(recorded=recorded, backend=backend)


def test_a_worker_gone_at_its_lifetime_is_no_failure_and_is_never_described_stale():
    done = _stop_lost_worker(JobInfo("42_1", state=COMPLETED, exit_code="0:0", accounted=True))
    assert done.recorded == []
    assert done.backend.tracker.polled == [["42_1"]]
    assert done.backend._cancellations.cancelled == [("alice", "42_1")]


def test_a_worker_whose_job_failed_is_recorded_with_slurms_final_facts():
    final = JobInfo(
        "42_1", state="OUT_OF_MEMORY", exit_code="0:125", nodes="n3", elapsed="00:01:10"
    )
    done = _stop_lost_worker(final)
    assert len(done.recorded) == 1
    assert "OUT_OF_MEMORY" in done.recorded[0] and "00:01:10" in done.recorded[0]
    assert "RUNNING" not in done.recorded[0]
