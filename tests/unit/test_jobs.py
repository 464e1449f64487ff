"""Submitting and ending jobs as their user: SLURM's refusals reach the user, an absent
slurmctld is waited for, running jobs get SIGTERM and a grace period, and cancellations
are retried until SLURM answers."""

import asyncio
import logging
import os
import time

import pytest

from slurm_gateway import jobs
from slurm_gateway.as_user import UserError
from slurm_gateway.jobs import JobControl, SlurmError
from slurm_gateway.slurm import JobInfo
from slurm_gateway.transport import CommandResult

UNREACHABLE = "sbatch: error: Batch job submission failed: Unable to contact slurm controller"
TERMINATE = ["scancel", "--full", "--signal=TERM", "--"]


class FakeRunner:
    """Answers each command with the next scripted (returncode, stdout, stderr); the last
    answer repeats. Records (argv, user, stdin)."""

    def __init__(self, *answers):
        self.answers = list(answers) or [(0, "", "")]
        self.calls = []

    async def run(self, argv, *, user=None, stdin=None):
        self.calls.append((argv, user, stdin))
        rc, stdout, stderr = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return CommandResult(argv, rc, stdout, stderr)

    def argvs(self):
        return [argv for argv, _, _ in self.calls]


class FakeTracker:
    def __init__(self, **states):
        self.jobs = {job_id: JobInfo(job_id, state) for job_id, state in states.items()}

    def get(self, job_id):
        return self.jobs.get(job_id)


def _control(
    runner, tracker=None, spawned=None, retry_timeout=0.2, grace_period=0.01, cancelled=None
):
    spawned = [] if spawned is None else spawned
    return JobControl(
        runner,
        tracker or FakeTracker(),
        spawned.append,
        sbatch="sbatch",
        scancel="scancel",
        retry_timeout=retry_timeout,
        grace_period=grace_period,
        log=logging.getLogger("test"),
        cancelled=cancelled or (lambda username: None),
    )


@pytest.fixture
def logs(tmp_path):
    path = tmp_path / "logs"
    path.mkdir(mode=0o700)
    return str(path)


@pytest.fixture(autouse=True)
def short_delays(monkeypatch):
    monkeypatch.setattr(jobs, "SUBMIT_RETRY_DELAYS", (0.01, 0.02))
    monkeypatch.setattr(jobs, "CANCEL_RETRY_DELAYS", (0.01, 0.02))


def _submit(control, logs, tasks=1):
    return asyncio.run(control.submit("alice", os.getuid(), "#!/bin/bash\n", logs, tasks))


def test_submit_returns_the_job_id_and_runs_sbatch_as_the_user(logs):
    runner = FakeRunner((0, "1234\n", ""))
    assert _submit(_control(runner), logs) == ["1234"]
    assert runner.calls == [(["sbatch", "--parsable"], "alice", b"#!/bin/bash\n")]


def test_submit_of_an_array_returns_one_id_per_task(logs):
    runner = FakeRunner((0, "1234;cluster1\n", ""))
    assert _submit(_control(runner), logs, tasks=3) == ["1234_0", "1234_1", "1234_2"]


def test_refusal_carries_slurms_message(logs):
    message = "sbatch: error: Batch job submission failed: Invalid account or account/partition"
    runner = FakeRunner((1, "", message))
    with pytest.raises(SlurmError, match="Invalid account or account/partition"):
        _submit(_control(runner), logs)
    assert len(runner.calls) == 1  # not retried


def test_unreachable_slurm_is_waited_for(logs):
    runner = FakeRunner((1, "", UNREACHABLE), (1, "", UNREACHABLE), (0, "77\n", ""))
    assert _submit(_control(runner), logs) == ["77"]
    assert len(runner.calls) == 3


def test_unreachable_slurm_gives_up_after_the_retry_timeout(logs):
    runner = FakeRunner((1, "", UNREACHABLE))
    started = time.monotonic()
    with pytest.raises(SlurmError, match="SLURM unavailable") as error:
        submit = _control(runner, retry_timeout=0.2).submit("alice", os.getuid(), "x", logs)
        asyncio.run(asyncio.wait_for(submit, 5))  # fails, rather than hangs, if it never ends
    elapsed = time.monotonic() - started
    assert "Unable to contact slurm controller" in str(error.value)
    assert 0.15 <= elapsed < 1.0  # waited about retry_timeout, no longer
    assert 3 <= len(runner.calls) <= 30


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701])
def test_submit_refused_when_the_log_directory_is_not_private(tmp_path, mode):
    path = tmp_path / "logs"
    path.mkdir()
    path.chmod(mode)
    runner = FakeRunner((0, "1\n", ""))
    with pytest.raises(UserError, match="nothing was submitted"):
        _submit(_control(runner), str(path))
    assert runner.calls == []


def test_submit_refused_when_the_log_directory_is_missing(tmp_path):
    runner = FakeRunner((0, "1\n", ""))
    with pytest.raises(UserError, match="nothing was submitted"):
        _submit(_control(runner), str(tmp_path / "missing"))
    assert runner.calls == []


def test_running_jobs_get_sigterm_then_scancel_after_the_grace_period():
    runner = FakeRunner()
    spawned = []
    control = _control(runner, FakeTracker(**{"1": "RUNNING", "2": "PENDING"}), spawned)

    async def scenario():
        await control.cancel("alice", ["1", "2", "3"])
        assert runner.argvs() == [TERMINATE + ["1"], ["scancel", "--", "2", "3"]]
        assert control.stopping == {"1"}  # not taken for an orphan meanwhile
        assert len(spawned) == 1
        await spawned.pop()
        assert runner.argvs()[-1] == ["scancel", "--", "1"]
        assert control.stopping == set()

    asyncio.run(scenario())
    assert {user for _, user, _ in runner.calls} == {"alice"}


def test_a_user_is_told_her_places_are_free_when_queued_jobs_are_cancelled_and_after_the_grace():
    # Her held workers go out then: at once for queued jobs, after SIGTERM's grace period
    # for running ones (they still count against her SLURM limits until they are gone).
    runner = FakeRunner()
    spawned, freed = [], []
    tracker = FakeTracker(**{"1": "RUNNING", "2": "PENDING"})
    control = _control(runner, tracker, spawned, cancelled=freed.append)

    async def scenario():
        await control.cancel("alice", ["2"])
        assert freed == ["alice"]
        await control.cancel("alice", ["1"])  # running: nothing freed yet
        assert freed == ["alice"] and len(spawned) == 1
        await spawned.pop()
        assert freed == ["alice", "alice"]

    asyncio.run(scenario())


def test_nobody_is_told_of_places_freed_before_slurm_has_cancelled_the_jobs():
    # slurmctld away: the cancellation goes on in the background, and the user's held
    # workers would only meet an absent slurmctld (and fail) if they were tried now.
    unreachable = (1, "", "scancel: error: Socket timed out on send/recv operation")
    runner = FakeRunner(unreachable, unreachable, (0, "", ""))
    spawned, freed = [], []
    control = _control(runner, spawned=spawned, cancelled=freed.append)

    async def scenario():
        await control.cancel("alice", ["9"])
        assert freed == [] and len(spawned) == 1
        await asyncio.wait_for(spawned.pop(), 5)
        assert freed == ["alice"]  # once SLURM has them cancelled

    asyncio.run(scenario())


def test_a_failing_listener_does_not_make_a_done_cancellation_fail():
    def broken(username):
        raise RuntimeError("listener broke")

    runner = FakeRunner()
    asyncio.run(_control(runner, cancelled=broken).cancel("alice", ["3"]))
    assert runner.argvs() == [["scancel", "--", "3"]]


def test_no_running_jobs_no_sigterm():
    runner = FakeRunner()
    spawned = []
    asyncio.run(_control(runner, FakeTracker(**{"1": "PENDING"}), spawned).cancel("bob", ["1"]))
    assert runner.calls == [(["scancel", "--", "1"], "bob", None)]
    assert spawned == []


def test_failed_sigterm_cancels_at_once():
    runner = FakeRunner((1, "", "scancel: error: Access/permission denied"), (0, "", ""))
    spawned = []
    control = _control(runner, FakeTracker(**{"1": "RUNNING"}), spawned)
    asyncio.run(control.cancel("alice", ["1", "2"]))
    assert runner.argvs() == [TERMINATE + ["1"], ["scancel", "--", "1", "2"]]
    assert spawned == [] and control.stopping == set()


@pytest.mark.parametrize(
    "stderr",
    [
        "scancel: error: Kill job error on job id 5: Job/step already completed",
        "scancel: error: Invalid job id specified",
    ],
)
def test_jobs_already_gone_are_not_an_error(stderr):
    runner = FakeRunner((1, "", stderr))
    asyncio.run(_control(runner).cancel("alice", ["5"]))
    assert len(runner.calls) == 1


def test_other_scancel_errors_raise():
    runner = FakeRunner((1, "", "scancel: error: Kill job error on job id 5: Access denied"))
    with pytest.raises(SlurmError, match="Access denied"):
        asyncio.run(_control(runner).cancel("alice", ["5"]))


def test_unreachable_scancel_is_retried_in_the_background_until_slurm_answers():
    unreachable = (1, "", "scancel: error: Socket timed out on send/recv operation")
    runner = FakeRunner(unreachable, unreachable, unreachable, (0, "", ""))
    spawned = []
    control = _control(runner, spawned=spawned)

    async def scenario():
        await control.cancel("alice", ["9"])  # returns at once, nothing raised
        assert len(runner.calls) == 1 and len(spawned) == 1
        await asyncio.wait_for(spawned.pop(), 5)

    asyncio.run(scenario())
    assert runner.argvs() == [["scancel", "--", "9"]] * 4
    assert {user for _, user, _ in runner.calls} == {"alice"}


def test_cancel_batch_answers_each_job():
    runner = FakeRunner()
    assert asyncio.run(_control(runner).cancel_batch("alice", ["1", "2"])) == [None, None]
    assert runner.argvs() == [["scancel", "--", "1", "2"]]


def test_cancel_of_nothing_runs_nothing():
    runner = FakeRunner()
    asyncio.run(_control(runner).cancel("alice", []))
    assert runner.calls == []
