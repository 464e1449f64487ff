"""What a scheduler's heartbeat does to its cluster's workers: scale-down drops held and
queued workers before started ones, and a running worker the heartbeat no longer lists is
asked about (the stock handler fails an assertion and refuses the whole heartbeat)."""

from __future__ import annotations

import asyncio
import functools
import logging

import pytest
from cryptography.fernet import Fernet
from dask_gateway_server.backends.db_base import DataManager, DBBackendBase, JobStatus

from slurm_gateway.dgs_compat import StockOverrides
from slurm_gateway.heartbeats import (
    HELD,
    NOT_SUBMITTED,
    QUEUED,
    STARTED,
    read_heartbeat,
    scale_down_rank,
)
from slurm_gateway.slurm import JobInfo

MSG = {"scheduler_address": "tls://s:1", "dashboard_address": "", "api_address": "http://s:2"}


class FakeBackend:
    """What on_cluster_heartbeat uses of the backend."""

    def __init__(self, data: DataManager, jobs: dict[str, JobInfo]):
        self.db = data
        self.jobs = jobs
        self.log = logging.getLogger("test")
        self.queue = self
        self.queued, self.missing = [], []
        self.metrics = self
        self.started = 0

    def put(self, obj):
        self.queued.append(obj)

    def allowed_worker_count(self, cluster, requested):
        return requested

    def job_info(self, worker):
        return self.jobs.get(worker.state.get("job_id", ""))

    def workers_missing(self, workers):
        self.missing += workers

    def heartbeat_started(self):
        self.started += 1

    def cluster_started(self, start_time):
        pass

    _allowed_heartbeat_count = StockOverrides._allowed_heartbeat_count
    on_cluster_heartbeat = StockOverrides.on_cluster_heartbeat


def in_loop(test):
    """An async test, run in an event loop of its own (the stock records make futures)."""

    @functools.wraps(test)
    def run():
        asyncio.run(test())

    return run


def running_cluster():
    data = DataManager(url="sqlite://", encrypt_keys=[Fernet.generate_key()])
    cluster = data.create_cluster("alice", {}, {})
    data.update_cluster(cluster, status=JobStatus.RUNNING, scheduler_address="tls://s:1")
    return data, cluster


def worker(data, cluster, status, **state):
    w = data.create_worker(cluster)
    data.update_worker(w, status=status, state=state)
    return w


def heartbeat(count, active=(), closing=(), closed=()):
    names = {"active_workers": active, "closing_workers": closing, "closed_workers": closed}
    return {**MSG, "count": count, **{k: [w.name for w in v] for k, v in names.items()}}


@in_loop
async def test_the_stock_handler_refuses_a_heartbeat_missing_a_running_worker():
    # Why the handler is replaced: the stock one asserts, before any backend code runs.
    data, cluster = running_cluster()
    worker(data, cluster, JobStatus.RUNNING, job_id="7")
    backend = FakeBackend(data, {})
    with pytest.raises(AssertionError):
        await DBBackendBase.on_cluster_heartbeat(backend, cluster.name, heartbeat(1))


@in_loop
async def test_a_running_worker_missing_from_the_heartbeat_is_asked_about():
    data, cluster = running_cluster()
    gone = worker(data, cluster, JobStatus.RUNNING, job_id="7")
    kept = worker(data, cluster, JobStatus.RUNNING, job_id="8")
    backend = FakeBackend(data, {})
    await backend.on_cluster_heartbeat(cluster.name, heartbeat(2, active=[kept]))
    assert backend.missing == [gone]
    assert gone.target == kept.target == JobStatus.RUNNING  # SLURM's answer decides
    assert cluster.count == 2


@in_loop
async def test_scaling_down_drops_held_workers_then_queued_then_started_ones():
    data, cluster = running_cluster()
    running = worker(data, cluster, JobStatus.RUNNING, job_id="1")
    started = worker(data, cluster, JobStatus.SUBMITTED, job_id="2")
    queued = [worker(data, cluster, JobStatus.SUBMITTED, job_id=j) for j in ("3", "4")]
    held = [worker(data, cluster, JobStatus.SUBMITTED, held=True) for _ in range(2)]
    jobs = {"2": JobInfo("2", state="RUNNING"), "3": JobInfo("3", state="PENDING")}
    backend = FakeBackend(data, jobs)  # job 4: SLURM not asked yet, so queued

    await backend.on_cluster_heartbeat(cluster.name, heartbeat(4, active=[running]))
    stopped = [w for w in cluster.workers.values() if w.target == JobStatus.STOPPED]
    assert set(stopped) == set(held)
    await backend.on_cluster_heartbeat(cluster.name, heartbeat(3, active=[running]))
    stopped = [w for w in cluster.workers.values() if w.target == JobStatus.STOPPED]
    assert set(stopped) == set(held) | {queued[1]}  # newest queued first
    await backend.on_cluster_heartbeat(cluster.name, heartbeat(2, active=[running]))
    assert started.target == JobStatus.RUNNING and running.target == JobStatus.RUNNING
    assert queued[0].target == JobStatus.STOPPED


@in_loop
async def test_a_held_worker_a_heartbeat_lists_stays_held():
    # A scheduler (the user's own code) may send any names: a held worker has no job, so
    # nothing of that name can be connected; marked running, it would never be submitted.
    data, cluster = running_cluster()
    held = worker(data, cluster, JobStatus.SUBMITTED, held=True)
    backend = FakeBackend(data, {})
    await backend.on_cluster_heartbeat(cluster.name, heartbeat(2, active=[held]))
    assert held.status == JobStatus.SUBMITTED and held.target == JobStatus.RUNNING
    assert held.state == {"held": True}


@in_loop
async def test_what_the_stock_handler_did_is_done_still():
    data, cluster = running_cluster()
    new = worker(data, cluster, JobStatus.SUBMITTED, job_id="1")
    closing = worker(data, cluster, JobStatus.RUNNING, job_id="2")
    lost = worker(data, cluster, JobStatus.RUNNING, job_id="3")
    retired = worker(data, cluster, JobStatus.RUNNING, job_id="4")
    data.update_worker(retired, close_expected=True)
    cluster.worker_start_failure_count = 2
    backend = FakeBackend(data, {})
    msg = heartbeat(5, active=[new], closing=[closing], closed=[lost, retired])
    await backend.on_cluster_heartbeat(cluster.name, msg)
    assert new.status == JobStatus.RUNNING and cluster.worker_start_failure_count == 0
    assert closing.close_expected and closing.target == JobStatus.RUNNING
    assert (lost.target, retired.target) == (JobStatus.FAILED, JobStatus.STOPPED)
    assert set(backend.queued) == {lost, retired, cluster} and backend.missing == []  # count
    assert cluster.count == 5 and backend.started == 0


@in_loop
async def test_a_clusters_first_heartbeat_sets_its_addresses_and_starts_the_overdue_watch():
    data = DataManager(url="sqlite://", encrypt_keys=[Fernet.generate_key()])
    cluster = data.create_cluster("alice", {}, {})
    data.update_cluster(cluster, status=JobStatus.SUBMITTED)
    backend = FakeBackend(data, {})
    await backend.on_cluster_heartbeat(cluster.name, heartbeat(0))
    assert cluster.scheduler_address == "tls://s:1" and backend.queued == [cluster]
    assert backend.started == 1


@in_loop
async def test_scale_down_ranks():
    data, cluster = running_cluster()
    created = data.create_worker(cluster)
    held = worker(data, cluster, JobStatus.SUBMITTED, held=True)
    job = worker(data, cluster, JobStatus.SUBMITTED, job_id="5")
    assert scale_down_rank(created, None) == NOT_SUBMITTED
    assert scale_down_rank(held, None) == HELD
    assert scale_down_rank(job, None) == QUEUED
    assert scale_down_rank(job, JobInfo("5", state="PENDING")) == QUEUED
    assert scale_down_rank(job, JobInfo("5", state="RUNNING")) == STARTED


@in_loop
async def test_names_that_are_not_strings_are_ignored():
    data, cluster = running_cluster()
    w = worker(data, cluster, JobStatus.SUBMITTED, job_id="1")
    reading = read_heartbeat([w], {"count": 1, "active_workers": [[w.name], 3]}, 1, lambda _: 0)
    assert reading.newly_running == [] and reading.to_stop == []
