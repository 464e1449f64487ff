"""Job owners and the orphan sweep: only jobs SLURM confirms, one by one, as this gateway's
are cancelled, as their owners; anything else named like ours is left alone."""

import asyncio
import logging
from datetime import datetime

import pytest

from slurm_gateway import ownership
from slurm_gateway.jobs import SlurmError
from slurm_gateway.ownership import (
    JobOwners,
    OrphanSweep,
    Owner,
    orphan_candidates,
    slurm_epoch,
)
from slurm_gateway.slurm import JobInfo
from slurm_gateway.transport import CommandResult

MARKER = "slurm-gateway:site1"
NAMES = ["dask-gateway-scheduler", "dask-gateway-worker"]
OLD = "2020-01-01T00:00:00"


def _row(job_id, user, state="RUNNING", submitted=OLD):
    return f"{job_id}|{state}|None|n1|1:00|N/A|{user}|{submitted}\n"


class FakeSlurm:
    """squeue by job name (the sweep) and by job id (the marker query), recording calls."""

    def __init__(self, rows=(), markers=None):
        self.squeue = "".join(rows)
        self.squeue_rc = 0
        self.markers = markers or {}  # job id -> (returncode, stdout)
        self.calls = []

    async def run(self, argv, *, user=None, stdin=None):
        self.calls.append((argv, user))
        if any(a.startswith("--users=") for a in argv):
            return CommandResult(argv, self.squeue_rc, self.squeue, "slurm_load_jobs error")
        job_id = next(a for a in argv if a.startswith("--jobs=")).removeprefix("--jobs=")
        rc, stdout = self.markers.get(job_id, (0, ""))
        return CommandResult(argv, rc, stdout, "" if rc == 0 else "Socket timed out")

    def marker_queries(self):
        return [
            next(a for a in argv if a.startswith("--jobs=")).removeprefix("--jobs=")
            for argv, _ in self.calls
            if "--format=%i|%u|%k" in argv
        ]


class FakeJobs:
    def __init__(self, error=None):
        self.stopping = set()
        self.cancelled = []
        self.error = error

    async def cancel(self, user, job_ids):
        self.cancelled.append((user, list(job_ids)))
        if self.error:
            raise SlurmError(self.error)


def _sweep(slurm, jobs=None, owners=None, may_be_ours=lambda user: True):
    return OrphanSweep(
        slurm,
        jobs or FakeJobs(),
        owners or JobOwners(),
        squeue="squeue",
        job_names=NAMES,
        marker=MARKER,
        may_be_ours=may_be_ours,
        min_age=60,
        log=logging.getLogger("test"),
    )


def _confirmed(job_id, user):
    return (0, f"{job_id}|{user}|{MARKER}\n")


def test_slurm_epoch_reads_local_time():
    assert slurm_epoch("2026-11-22T11:00:00", 5.0) == datetime(2026, 11, 22, 11).timestamp()


@pytest.mark.parametrize("text", ["N/A", "Unknown", "", "garbage"])
def test_slurm_epoch_of_unreadable_time_is_now(text):
    assert slurm_epoch(text, 1234.5) == 1234.5


def test_orphan_candidates():
    now = datetime(2026, 11, 22, 12).timestamp()
    seen = {
        "1": JobInfo("1", "RUNNING", submit_time="2026-11-22T11:00:00"),
        "2": JobInfo("2", "PENDING", submit_time="2026-11-22T11:58:30"),  # 90 s old
        "3": JobInfo("3", "PENDING", submit_time="2026-11-22T11:59:30"),  # too young
        "4": JobInfo("4", "COMPLETED", submit_time="2026-11-22T11:00:00"),  # ended
        "5": JobInfo("5", "CANCELLED", submit_time="2026-11-22T11:00:00"),  # ended
        "6": JobInfo("6", "RUNNING", submit_time="2026-11-22T11:00:00"),  # skipped
        "7": JobInfo("7", "PENDING", submit_time="N/A"),  # unreadable: counts as now
        "8": JobInfo("8", "RUNNING", submit_time="2026-11-22T11:59:00"),  # exactly min_age
    }
    found = orphan_candidates(seen, lambda job_id: job_id == "6", now, 60)
    assert [info.job_id for info in found] == ["1", "2"]


def test_job_owners():
    owners = JobOwners()
    assert not owners
    owners.add("10", Owner("c1"))
    owners.add("11_0", Owner("c1", "w1"))
    assert owners and "11_0" in owners and "12" not in owners
    assert owners.get("11_0") == Owner("c1", "w1") and owners.get("10").worker is None
    owners.remove(["10", "12"])  # unknown ids are ignored
    assert "10" not in owners and owners.get("10") is None and "11_0" in owners


def test_confirmed_orphans_are_cancelled_as_their_owner():
    slurm = FakeSlurm(
        [_row("100", "alice"), _row("101_0", "alice"), _row("102", "bob")],
        {"100": _confirmed("100", "alice"), "101_0": _confirmed("101_0", "alice")},
    )
    jobs = FakeJobs()
    asyncio.run(_sweep(slurm, jobs).sweep(["alice", "bob"]))
    assert jobs.cancelled == [("alice", ["100", "101_0"])]  # bob's job: no marker
    assert all(user is None for _, user in slurm.calls)  # the queries are the gateway's own
    sweep_argv = slurm.calls[0][0]
    assert "--users=alice,bob" in sweep_argv and "--name=" + ",".join(NAMES) in sweep_argv


def test_job_with_another_comment_is_left_alone_and_not_asked_about_again():
    slurm = FakeSlurm([_row("200", "alice")], {"200": (0, "200|alice|other-gateway\n")})
    jobs = FakeJobs()
    sweep = _sweep(slurm, jobs)
    asyncio.run(sweep.sweep(["alice"]))
    asyncio.run(sweep.sweep(["alice"]))
    assert jobs.cancelled == []
    assert slurm.marker_queries() == ["200"]


def test_forged_multiline_comment_is_not_ours():
    forged = (0, f"300|alice|x\n300|alice|{MARKER}\n")
    slurm = FakeSlurm([_row("300", "alice")], {"300": forged})
    jobs = FakeJobs()
    asyncio.run(_sweep(slurm, jobs).sweep(["alice"]))
    assert jobs.cancelled == []


def test_user_who_cannot_have_clusters_is_never_queried():
    slurm = FakeSlurm([_row("400", "mallory")], {"400": _confirmed("400", "mallory")})
    jobs = FakeJobs()
    sweep = _sweep(slurm, jobs, may_be_ours=lambda user: user != "mallory")
    asyncio.run(sweep.sweep(["mallory"]))
    asyncio.run(sweep.sweep(["mallory"]))
    assert slurm.marker_queries() == [] and jobs.cancelled == []


def test_failed_squeue_skips_the_sweep():
    slurm = FakeSlurm([_row("500", "alice")], {"500": _confirmed("500", "alice")})
    slurm.squeue_rc = 1
    jobs = FakeJobs()
    asyncio.run(_sweep(slurm, jobs).sweep(["alice"]))
    assert slurm.marker_queries() == [] and jobs.cancelled == []


def test_failed_marker_query_is_asked_again_next_sweep():
    slurm = FakeSlurm([_row("600", "alice")], {"600": (1, "")})
    jobs = FakeJobs()
    sweep = _sweep(slurm, jobs)
    asyncio.run(sweep.sweep(["alice"]))
    assert jobs.cancelled == []
    slurm.markers["600"] = _confirmed("600", "alice")
    asyncio.run(sweep.sweep(["alice"]))
    assert slurm.marker_queries() == ["600", "600"]
    assert jobs.cancelled == [("alice", ["600"])]


def test_owned_and_stopping_jobs_are_not_queried():
    rows = [_row("700", "alice"), _row("701", "alice"), _row("702", "alice", submitted="N/A")]
    slurm = FakeSlurm(rows, {j: _confirmed(j, "alice") for j in ("700", "701", "702")})
    jobs = FakeJobs()
    jobs.stopping.add("701")
    owners = JobOwners()
    owners.add("700", Owner("c1"))
    asyncio.run(_sweep(slurm, jobs, owners).sweep(["alice"]))
    assert slurm.marker_queries() == [] and jobs.cancelled == []


def test_no_users_nothing_asked():
    slurm = FakeSlurm()
    asyncio.run(_sweep(slurm).sweep([]))
    assert slurm.calls == []


def test_at_most_max_orphan_checks_per_sweep():
    count = ownership.MAX_ORPHAN_CHECKS + 10
    ids = [str(1000 + i) for i in range(count)]
    slurm = FakeSlurm([_row(j, "alice") for j in ids], {j: (0, f"{j}|alice|other\n") for j in ids})
    sweep = _sweep(slurm)
    asyncio.run(sweep.sweep(["alice"]))
    assert len(slurm.marker_queries()) == ownership.MAX_ORPHAN_CHECKS
    asyncio.run(sweep.sweep(["alice"]))  # the rest on the next sweep, nothing twice
    assert sorted(slurm.marker_queries()) == ids


def test_failed_cancellation_does_not_stop_the_sweep():
    slurm = FakeSlurm(
        [_row("800", "alice"), _row("801", "bob")],
        {"800": _confirmed("800", "alice"), "801": _confirmed("801", "bob")},
    )
    jobs = FakeJobs(error="scancel exited 1: Access denied")
    asyncio.run(_sweep(slurm, jobs).sweep(["alice", "bob"]))
    assert jobs.cancelled == [("alice", ["800"]), ("bob", ["801"])]
