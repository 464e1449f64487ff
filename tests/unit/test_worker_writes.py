"""Worker records written behind (worker_writes.WriteBehindData): changed in memory at once,
written once per pass of the event loop, kept and written again when the database fails,
and what a restarted gateway reads back."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from cryptography.fernet import Fernet
from dask_gateway_server.backends.db_base import DataManager, JobStatus

from slurm_gateway import worker_writes
from slurm_gateway.worker_writes import WriteBehindData, insert_workers

KEY = Fernet.generate_key()


class _Log:
    def __init__(self):
        self.warnings = []

    def warning(self, *args):
        self.warnings.append(args[0] % args[1:])


def _commits(engine) -> list[int]:
    commits = [0]
    sa.event.listen(engine, "commit", lambda _connection: commits.__setitem__(0, commits[0] + 1))
    return commits


def test_the_changes_of_one_loop_pass_are_one_transaction_read_back_after_a_restart(tmp_path):
    asyncio.run(_one_pass(f"sqlite:///{tmp_path}/state.sqlite"))


async def _one_pass(url):
    data = WriteBehindData.adopt(DataManager(url=url, encrypt_keys=[KEY]), _Log())
    cluster = data.create_cluster("alice", {}, {})
    workers = insert_workers(data, cluster, 250)
    commits = _commits(data.db)
    for number, worker in enumerate(workers):
        data.update_worker(worker, state={"job_id": f"7_{number}"})
        data.update_worker(worker, status=JobStatus.SUBMITTED)
    data.update_workers([(w, {"target": JobStatus.STOPPED}) for w in workers[:10]])
    assert workers[0].status == JobStatus.SUBMITTED  # in memory at once
    assert commits == [0] and data.unwritten == 250
    await asyncio.sleep(0)
    assert commits == [1] and data.unwritten == 0
    again = DataManager(url=url, encrypt_keys=[KEY]).get_cluster(cluster.name).workers
    for number, worker in enumerate(workers):
        read = again[worker.name]
        assert read.state == {"job_id": f"7_{number}"} and read.status == JobStatus.SUBMITTED
        assert read.target == (JobStatus.STOPPED if number < 10 else JobStatus.RUNNING)


def test_changes_the_database_refused_are_written_again_later(tmp_path, monkeypatch):
    monkeypatch.setattr(worker_writes, "RETRY_DELAY", 0.05)
    asyncio.run(_refused(f"sqlite:///{tmp_path}/state.sqlite"))


async def _refused(url):
    log = _Log()
    data = WriteBehindData.adopt(DataManager(url=url, encrypt_keys=[KEY]), log)
    cluster = data.create_cluster("alice", {}, {})
    [worker] = insert_workers(data, cluster, 1)
    engine = data.db
    data.db = sa.create_engine("sqlite:////nonexistent-dir/x.sqlite")  # refuses to open
    data.update_worker(worker, status=JobStatus.SUBMITTED)
    await asyncio.sleep(0.01)
    assert data.unwritten == 1 and "retrying in" in log.warnings[0]
    data.update_worker(worker, status=JobStatus.RUNNING)  # newer than what was refused
    data.db = engine
    await asyncio.sleep(0.1)
    assert data.unwritten == 0
    read = DataManager(url=url, encrypt_keys=[KEY]).get_cluster(cluster.name).workers
    assert read[worker.name].status == JobStatus.RUNNING
