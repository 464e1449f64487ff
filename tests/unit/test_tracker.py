"""Job tracking: one squeue per poll for all jobs, sacct only for jobs that left the queue,
and an unreachable SLURM never turns into a failure."""

import asyncio

from slurm_gateway.tracker import JobTracker
from slurm_gateway.transport import CommandResult

# user and submit time columns of an squeue line
TAIL = "|alice|2026-11-22T11:00:00\n"


class FakeSlurm:
    """Answers squeue/sacct from scripted output and records every call."""

    def __init__(self):
        self.squeue = ""
        self.sacct = ""
        self.squeue_rc = 0
        self.sacct_rc = 0
        self.calls = []

    async def run(self, argv):
        self.calls.append(argv[0])
        if argv[0] == "squeue":
            return CommandResult(argv, self.squeue_rc, self.squeue, "slurm_load_jobs error")
        return CommandResult(argv, self.sacct_rc, self.sacct, "slurmdbd: Connection refused")


def _tracker(slurm):
    return JobTracker(slurm.run)


def _ended_after_poll(tracker):
    asyncio.run(tracker.poll())
    return tracker.take_ended()


def test_one_squeue_per_poll_whatever_the_number_of_jobs():
    slurm = FakeSlurm()
    tracker = _tracker(slurm)
    for i in range(500):
        tracker.track(str(i))
    slurm.squeue = "".join(f"{i}|RUNNING|None|n1|1:00|N/A" + TAIL for i in range(500))
    assert _ended_after_poll(tracker) == []
    assert slurm.calls == ["squeue"]
    assert tracker.get("499").state == "RUNNING"


def test_finished_job_is_reported_once_with_its_accounting():
    slurm = FakeSlurm()
    tracker = _tracker(slurm)
    tracker.track("7")
    slurm.squeue = "7|RUNNING|None|n2|0:10|N/A" + TAIL
    asyncio.run(tracker.poll())
    slurm.squeue = "7|OUT_OF_MEMORY|OutOfMemory|n2|0:12|N/A" + TAIL
    slurm.sacct = "7|OUT_OF_MEMORY|0:125|n2|00:00:12|None" + TAIL
    finished = _ended_after_poll(tracker)
    assert [(f.job_id, f.state, f.exit_code, f.nodes) for f in finished] == [
        ("7", "OUT_OF_MEMORY", "0:125", "n2")
    ]
    assert _ended_after_poll(tracker) == []  # accounted: not asked about again
    assert slurm.calls == ["squeue", "squeue", "sacct"]


def test_slurm_outage_keeps_last_known_states():
    slurm = FakeSlurm()
    tracker = _tracker(slurm)
    tracker.track("8")
    slurm.squeue = "8|RUNNING|None|n1|0:10|N/A" + TAIL
    asyncio.run(tracker.poll())
    slurm.squeue_rc = 1
    assert _ended_after_poll(tracker) == []
    assert tracker.get("8").state == "RUNNING" and tracker.get("8").is_active


def test_job_purged_from_queue_and_accounting_is_unknown_not_failed():
    slurm = FakeSlurm()
    tracker = _tracker(slurm)
    tracker.track("9")
    finished = _ended_after_poll(tracker)
    assert finished == []
    assert tracker.get("9").state == "UNKNOWN" and tracker.get("9").is_active


def test_a_job_ending_is_kept_for_the_backend_whichever_poll_saw_it():
    # e.g. the failure explanation polls too: the end it sees must still reach the backend.
    slurm = FakeSlurm()
    tracker = _tracker(slurm)
    tracker.track("11")
    tracker.track("12")
    slurm.squeue = "11|CANCELLED|None|n1|0:10|N/A" + TAIL + "12|RUNNING|None|n1|0:10|N/A" + TAIL
    slurm.sacct = "11|CANCELLED by 0|0:0|n1|00:00:10|None" + TAIL
    asyncio.run(tracker.poll())
    slurm.squeue = "11|CANCELLED|None|n1|0:10|N/A" + TAIL + "12|FAILED|None|n1|0:11|N/A" + TAIL
    slurm.sacct = "12|FAILED|3:0|n1|00:00:11|None" + TAIL
    ended = _ended_after_poll(tracker)
    assert [(f.job_id, f.state) for f in ended] == [("11", "CANCELLED"), ("12", "FAILED")]
    assert _ended_after_poll(tracker) == []


def test_without_accounting_a_job_still_ends_with_what_squeue_says():
    slurm = FakeSlurm()
    tracker = _tracker(slurm)
    tracker.track("13")
    slurm.sacct_rc = 1  # slurmdbd down
    slurm.squeue = "13|COMPLETING|None|n1|0:10|N/A" + TAIL
    for _ in range(8):  # longer than a job is given to show up in accounting
        assert _ended_after_poll(tracker) == []
    assert tracker.get("13").state == "COMPLETING"
    slurm.squeue = "13|CANCELLED|None|n1|0:11|N/A" + TAIL
    assert [(f.job_id, f.state) for f in _ended_after_poll(tracker)] == [("13", "CANCELLED")]
    slurm.sacct_rc = 0  # back: the exit code is filled in, and the job is settled
    slurm.sacct = "13|CANCELLED by 0|0:15|n1|00:00:11|None" + TAIL
    assert _ended_after_poll(tracker) == []
    assert tracker.get("13").exit_code == "0:15"
    calls = len(slurm.calls)
    asyncio.run(tracker.poll())
    assert len(slurm.calls) == calls  # nothing left to ask about


def test_forgotten_jobs_are_not_polled():
    slurm = FakeSlurm()
    tracker = _tracker(slurm)
    tracker.track("10")
    tracker.forget(["10"])
    asyncio.run(tracker.poll())
    assert slurm.calls == []
