"""Submitting within SLURM's limits: refusals classified, refused arrays halved until a
part fits, the rest held in the gateway and released first; the reason in the report."""

from __future__ import annotations

import asyncio
import logging

import dask_gateway_server
from cryptography.fernet import Fernet
from dask_gateway_server.backends.db_base import DataManager, JobStatus

from slurm_gateway import cluster_reports, worker_submission
from slurm_gateway.backend import SlurmBackend
from slurm_gateway.cluster_reports import PendingReasonReports, report_problems, with_pending_reason
from slurm_gateway.jobs import SlurmError
from slurm_gateway.submit_limits import (
    MAX_REASON_CHARS,
    SHARED_RETRY_GAP,
    Refusal,
    SubmitPlan,
    classify_refusal,
    is_held,
    is_shared_limit,
    limit_name,
    pending_reason,
)
from slurm_gateway.worker_submission import WorkerSubmission, held_workers

POLICY = (
    "Batch job submission failed: Job violates accounting/QOS policy "
    "(job submit limit, user's size and/or time limits)"
)
QOS_REFUSAL = f"sbatch: error: QOSMaxSubmitJobPerUserLimit\nsbatch: error: {POLICY}"


def test_refusals_for_too_many_jobs_are_submit_limits_and_others_are_not():
    assert classify_refusal(QOS_REFUSAL) is Refusal.SUBMIT_LIMIT
    assert classify_refusal(f"sbatch: error: AssocMaxSubmitJobLimit\n{POLICY}") is (
        Refusal.SUBMIT_LIMIT
    )
    assert classify_refusal(f"sbatch: error: AssocGrpSubmitJobsLimit\n{POLICY}") is (
        Refusal.SUBMIT_LIMIT
    )
    assert classify_refusal(POLICY) is Refusal.SUBMIT_LIMIT
    # A wall-time limit is the same generic message: fewer jobs would not help.
    assert classify_refusal(f"sbatch: error: QOSMaxWallDurationPerJobLimit\n{POLICY}") is (
        Refusal.OTHER
    )
    assert classify_refusal("Batch job submission failed: Invalid job array specification") is (
        Refusal.ARRAY_TOO_BIG
    )
    assert classify_refusal("Requested node configuration is not available") is Refusal.OTHER
    assert limit_name(QOS_REFUSAL) == "QOSMaxSubmitJobPerUserLimit"
    assert limit_name(POLICY) == "job submit limit"


def fit(total: int, free: int) -> tuple[list[int], int]:
    """The sizes tried by a plan against a limit of ``free`` more jobs; how many were held."""
    plan, tried = SubmitPlan(total), []
    while not plan.done:
        size = plan.next_size()
        tried.append(size)
        if size <= free:
            free -= size
            plan.accepted(size)
        else:
            plan.refused()
    return tried, plan.remaining


def test_a_refused_array_is_halved_until_it_fits_and_what_never_fits_is_held():
    tried, held = fit(80, 49)
    assert held == 31
    assert tried[:2] == [80, 40] and tried[-1] == 1
    assert len(tried) <= 2 * 7  # a few calls, not one per worker
    assert fit(80, 80) == ([80], 0)
    assert fit(3, 0) == ([3, 1], 3)
    assert fit(1, 0) == ([1], 1)


def test_the_reason_says_how_many_wait_and_why():
    assert pending_reason(31, "QOSMaxSubmitJobPerUserLimit") == (
        "31 workers wait in the gateway: SLURM refused more jobs "
        "(QOSMaxSubmitJobPerUserLimit); they are submitted as your jobs end"
    )
    assert pending_reason(1, "x").startswith("1 worker waits")
    assert is_held({"held": True}) and not is_held({"job_id": "1"}) and not is_held({})


class FakeSubmission(WorkerSubmission):
    """The submission part of the backend against a SLURM that takes ``free`` more jobs."""

    def __init__(self, data: DataManager, free: int):
        self.db = data
        self.free = free
        self.calls: list[int] = []
        self.tracked: dict[str, str] = {}
        self.suspected: list[str] = []
        self.spawned: list = []
        self._releasing: set[str] = set()
        self._release_again: set[str] = set()
        self.log = logging.getLogger("test")
        self.task_pool = self
        self.next_id = 100
        self.refusal = f"SLURM refused the job: {QOS_REFUSAL}"
        self._shared_retried: dict[str, float] = {}

    def spawn(self, coroutine):
        self.spawned.append(coroutine)
        coroutine.close()

    def _job_script(self, cluster, role, log_directory, workers):
        return "script"

    async def _submit(self, cluster, script, tasks):
        self.calls.append(tasks)
        if tasks > self.free:
            raise SlurmError(self.refusal)
        self.free -= tasks
        self.next_id += 1
        return [str(self.next_id)] if tasks == 1 else [f"{self.next_id}_{i}" for i in range(tasks)]

    def _track(self, job_id, cluster, worker=None):
        self.tracked[job_id] = worker.name

    def watch_submitted(self, job_ids):  # SLURM is asked about new jobs at once (job_ends)
        self.suspected += job_ids

    def _forget(self, job_ids):
        for job_id in job_ids:
            self.tracked.pop(job_id, None)

    def _record(self, cluster, **state):
        self.db.update_cluster(cluster, state={**cluster.state, **state})

    def record_worker_failure(self, cluster, text):
        raise AssertionError(text)


async def start(backend: FakeSubmission, cluster, count: int) -> list:
    """Start ``count`` workers as the stock code does (the state do_start_worker yields)."""
    workers = [backend.db.create_worker(cluster) for _ in range(count)]
    job_ids = await backend._submit_workers(cluster.name, workers)
    for worker, job_id in zip(workers, job_ids, strict=True):
        state = {"job_id": job_id} if job_id else {"held": True}
        backend.db.update_worker(worker, state=state, status=JobStatus.SUBMITTED)
    return workers


def test_what_slurm_refuses_is_held_reported_and_submitted_first_when_jobs_end(tmp_path):
    asyncio.run(_held_and_released(tmp_path))


def test_a_worker_stopped_while_its_held_job_was_submitted_has_that_job_cancelled(tmp_path):
    asyncio.run(_stopped_while_submitted(tmp_path))


def database(tmp_path) -> DataManager:
    return DataManager(url=f"sqlite:///{tmp_path}/s.sqlite", encrypt_keys=[Fernet.generate_key()])


async def _held_and_released(tmp_path):
    data = database(tmp_path)
    cluster = data.create_cluster("carol", {"size": 1}, {})
    data.update_cluster(cluster, state={"log_directory": "/logs"})
    backend = FakeSubmission(data, free=49)

    workers = await start(backend, cluster, 80)
    assert sum(backend.calls) > 80  # some were refused
    assert len(backend.tracked) == 49
    assert held_workers(cluster) == workers[49:]
    assert cluster.state["held_because"] == "QOSMaxSubmitJobPerUserLimit"
    model = with_pending_reason(cluster.to_model(), cluster)
    assert model.options["pending_reason"].startswith("31 workers wait in the gateway")
    assert "pending_reason" not in cluster.options  # the record's own options are untouched

    # A newer worker waits behind the held ones rather than overtaking them.
    backend.calls.clear()
    backend.free = 1
    [newer] = await start(backend, cluster, 1)
    assert backend.calls == [] and held_workers(cluster)[-1] is newer
    assert backend.spawned  # and the held ones are tried

    # Ten jobs end: ten held workers go out, oldest first; the rest stay held.
    backend.free = 10
    await backend._release_held("carol")
    assert [w.state.get("job_id") is not None for w in workers[49:61]] == [True] * 10 + [False] * 2
    assert len(held_workers(cluster)) == 22

    # All fit: nothing held, no reason reported.
    backend.free = 100
    await backend._release_held("carol")
    assert held_workers(cluster) == [] and cluster.state["held_because"] is None
    assert "pending_reason" not in with_pending_reason(cluster.to_model(), cluster).options
    assert len(backend.tracked) == 81


async def _stopped_while_submitted(tmp_path):
    data = database(tmp_path)
    cluster = data.create_cluster("carol", {}, {})
    data.update_cluster(cluster, state={"log_directory": "/logs"})
    backend = FakeSubmission(data, free=0)
    [worker] = await start(backend, cluster, 1)
    backend.free = 1

    async def stopped_meanwhile(cluster, workers):
        data.update_worker(worker, target=JobStatus.STOPPED)
        return await WorkerSubmission._submit_worker_jobs(backend, cluster, workers)

    backend._submit_worker_jobs = stopped_meanwhile
    backend._cancellations = type("C", (), {"add": staticmethod(lambda *a: asyncio.sleep(0))})
    await backend._release_held("carol")
    assert backend.tracked == {} and len(backend.spawned) == 1 and "job_id" not in worker.state


def test_the_stock_report_methods_the_overrides_rely_on_are_unchanged():
    problems = report_problems()
    assert not problems, (
        f"dask-gateway-server {dask_gateway_server.__version__} changed what "
        f"slurm_gateway/cluster_reports.py relies on; review its overrides: {problems}"
    )
    for name in cluster_reports.OVERRIDDEN:
        assert getattr(SlurmBackend, name) is getattr(PendingReasonReports, name), name


def test_workers_held_while_held_ones_are_submitted_go_out_in_the_same_release(tmp_path):
    asyncio.run(_held_meanwhile(tmp_path))


async def _held_meanwhile(tmp_path):
    data = database(tmp_path)
    cluster = data.create_cluster("carol", {}, {})
    data.update_cluster(cluster, state={"log_directory": "/logs"})
    backend = FakeSubmission(data, free=0)
    await start(backend, cluster, 3)
    backend.free = 10
    later = []

    async def newer_held_meanwhile(cluster, workers):
        if not later:
            later.append(data.create_worker(cluster))
            data.update_worker(later[0], state={"held": True}, status=JobStatus.SUBMITTED)
        return await WorkerSubmission._submit_worker_jobs(backend, cluster, workers)

    backend._submit_worker_jobs = newer_held_meanwhile
    await backend._release_held("carol")
    assert held_workers(cluster) == [] and "job_id" in later[0].state


def test_places_freed_while_a_release_runs_get_a_release_of_their_own(tmp_path, monkeypatch):
    monkeypatch.setattr(worker_submission, "RELEASE_AGAIN_GAP", 0.0)
    asyncio.run(_freed_during_release(tmp_path))


async def _freed_during_release(tmp_path):
    # The release under way was refused (limit reached) after places were freed by a
    # cancellation that came while it ran: without another try they wait for the timer.
    data = database(tmp_path)
    cluster = data.create_cluster("carol", {}, {})
    data.update_cluster(cluster, state={"log_directory": "/logs"})
    backend = FakeSubmission(data, free=0)
    await start(backend, cluster, 3)
    backend.spawned.clear()

    async def tries(asked_meanwhile: bool) -> int:
        before = len(backend.calls)
        backend._releasing.add("carol")  # a release runs
        if asked_meanwhile:
            backend.release_held_soon("carol")
        await backend._release_held("carol")
        return len(backend.calls) - before

    alone, asked = await tries(False), await tries(True)
    assert asked == 2 * alone > 0, "one more try (and only one) for places freed meanwhile"
    assert backend.spawned == [] and not backend._releasing and not backend._release_again


def test_held_workers_slurm_then_refuses_for_another_reason_fail_with_it(tmp_path):
    asyncio.run(_held_then_refused(tmp_path))


async def _held_then_refused(tmp_path):
    data = database(tmp_path)
    cluster = data.create_cluster("carol", {}, {})
    data.update_cluster(cluster, state={"log_directory": "/logs"})
    backend = FakeSubmission(data, free=0)
    workers = await start(backend, cluster, 3)
    assert held_workers(cluster) == workers
    failures, queued = [], []
    backend.queue = type("Queue", (), {"put": lambda self, w: queued.append(w)})()
    backend.record_worker_failure = lambda cluster, text: failures.append(text)

    async def refused(cluster, script, tasks):
        raise SlurmError("sbatch: error: Batch job submission failed: Invalid account")

    backend._submit = refused
    await backend._release_held("carol")
    assert held_workers(cluster) == []
    assert [w.target for w in workers] == [JobStatus.FAILED] * 3 and queued == workers
    assert failures == [
        "3 held worker(s) not submitted: sbatch: error: Batch job "
        "submission failed: Invalid account"
    ]
    assert cluster.worker_start_failure_count == 1 and cluster.state["held_because"] is None


class RunningSubmission(FakeSubmission):
    """FakeSubmission whose background tasks (the releases) really run."""

    def spawn(self, coroutine):
        self.spawned.append(asyncio.ensure_future(coroutine))

    async def settle(self):
        while pending := [t for t in self.spawned if not t.done()]:
            await asyncio.gather(*pending)


def test_a_refusal_shown_as_the_held_reason_is_readable_and_bounded(tmp_path):
    asyncio.run(_hostile_refusal(tmp_path))


async def _hostile_refusal(tmp_path):
    data = database(tmp_path)
    cluster = data.create_cluster("carol", {}, {})
    data.update_cluster(cluster, state={"log_directory": "/logs"})
    backend = FakeSubmission(data, free=1)
    hostile = "SLURM refused: node \x1b[2J\x1b]0;x\x07\u202egone\nFORGED" + "y" * 5000
    submit = backend._submit

    async def then_refused_otherwise(cluster, script, tasks):
        if backend.free == 0 and tasks == 1:
            # Not a submit limit: held as it is, in SLURM's words (which may quote others').
            raise SlurmError(hostile)
        return await submit(cluster, script, tasks)

    backend._submit = then_refused_otherwise
    await start(backend, cluster, 3)  # 3 refused for the limit, then 1 taken, then this
    assert len(held_workers(cluster)) == 2
    reason = cluster.state["held_because"]
    assert reason.startswith("SLURM refused: node ?[2J?]0;x??gone | FORGED")
    assert len(reason) <= MAX_REASON_CHARS and reason.isprintable()
    # What an older record holds is made readable when shown.
    data.update_cluster(cluster, state={**cluster.state, "held_because": hostile})
    shown = with_pending_reason(cluster.to_model(), cluster).options["pending_reason"]
    assert shown.isprintable() and len(shown) < MAX_REASON_CHARS + 150, shown


def test_limits_shared_with_other_users_are_told_apart_from_per_user_ones():
    assert not is_shared_limit("QOSMaxSubmitJobPerUserLimit")
    assert not is_shared_limit("AssocMaxSubmitJobLimit")  # the user's own association
    assert is_shared_limit("AssocGrpSubmitJobsLimit")  # the account's, all its users'
    assert is_shared_limit("QOSGrpSubmitJobsLimit")
    assert is_shared_limit("QOSMaxSubmitJobPerAccountLimit")
    assert is_shared_limit("job submit limit")  # SLURM did not say whose
    assert not is_shared_limit("QOSGrpCpuLimit")  # not a submit limit
    assert pending_reason(2, "AssocGrpSubmitJobsLimit").endswith(
        "they are submitted as jobs under that shared limit end"
    )


def test_workers_held_by_a_shared_limit_go_out_at_the_periodic_retry(tmp_path):
    asyncio.run(_shared_periodic(tmp_path))


async def _shared_periodic(tmp_path):
    # carol and dave share their account's GrpSubmitJobs: dave's jobs end, not carol's, and
    # the gateway sees none of it (dave uses SLURM directly): the retry timer releases hers.
    data = database(tmp_path)
    cluster = data.create_cluster("carol", {}, {})
    data.update_cluster(cluster, state={"log_directory": "/logs"})
    backend = RunningSubmission(data, free=0)
    backend.refusal = f"sbatch: error: AssocGrpSubmitJobsLimit\n{POLICY}"
    await start(backend, cluster, 3)
    assert len(held_workers(cluster)) == 3
    assert cluster.state["held_because"] == "AssocGrpSubmitJobsLimit"
    backend.free = 10
    timer = asyncio.ensure_future(SlurmBackend._every(backend, 0.05, backend.release_all_held, ""))
    await asyncio.sleep(0.2)
    timer.cancel()
    await backend.settle()
    assert held_workers(cluster) == [] and cluster.state["held_because"] is None


def test_workers_held_by_a_shared_limit_go_out_as_anyones_jobs_end(tmp_path):
    asyncio.run(_shared_on_job_end(tmp_path))


async def _shared_on_job_end(tmp_path):
    data = database(tmp_path)
    carol = data.create_cluster("carol", {}, {})
    erin = data.create_cluster("erin", {}, {})
    for cluster in (carol, erin):
        data.update_cluster(cluster, state={"log_directory": "/logs"})
    backend = RunningSubmission(data, free=0)
    backend.refusal = f"sbatch: error: AssocGrpSubmitJobsLimit\n{POLICY}"
    await start(backend, carol, 2)
    backend.refusal = f"SLURM refused the job: {QOS_REFUSAL}"  # erin's own limit
    await start(backend, erin, 2)
    backend.refusal = f"sbatch: error: AssocGrpSubmitJobsLimit\n{POLICY}"
    await backend.settle()
    backend.free, backend.calls = 1, []
    backend.release_shared_held_soon()  # someone's job ended
    await backend.settle()
    assert len(held_workers(carol)) == 1 and len(held_workers(erin)) == 2
    backend.free = 10
    backend.release_shared_held_soon()  # another end at once: within the gap, not retried
    await backend.settle()
    assert len(held_workers(carol)) == 1
    for user in backend._shared_retried:
        backend._shared_retried[user] -= SHARED_RETRY_GAP
    backend.release_shared_held_soon()
    await backend.settle()
    assert held_workers(carol) == [] and len(held_workers(erin)) == 2  # erin's: her own ends
