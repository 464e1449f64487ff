"""The gateway's decisions about start timeouts, heartbeats and failure messages."""

from dataclasses import replace

import pytest

from slurm_gateway.lifecycle import (
    ClusterFacts,
    StartPolicy,
    cluster_failure,
    heartbeat_overdue,
    is_alive,
    scheduler_log,
    scheduler_timed_out,
    start_failure,
    with_last_log_line,
    worker_start_failure,
    worker_start_timed_out,
)
from slurm_gateway.slurm import JobInfo

CREATED = 1_000_000.0
DEFAULT = StartPolicy(
    cluster_start_timeout=120,
    queue_aware=False,
    scheduler_queue_timeout=3600,
    worker_start_timeout=300,
)
QUEUE_AWARE = replace(DEFAULT, queue_aware=True)
LOGS = "/home/alice/.dask-gateway/logs/20260101-120000-abcd1234"
CLUSTER = ClusterFacts(
    name="c0ffee",
    job_id="42",
    scheduler_started=False,
    walltime="1-00:00:00",
    log_directory=LOGS,
    worker_start_failures=0,
    worker_failure_limit=3,
)
PENDING = JobInfo("42", state="PENDING", reason="Priority", start_time="2026-01-01T13:00:00")
RUNNING = JobInfo("42", state="RUNNING", nodes="n1", elapsed="0:10", running_since=CREATED + 50)


# -- scheduler start timeout ---------------------------------------------------------------


@pytest.mark.parametrize("job", [None, PENDING, RUNNING], ids=["unpolled", "queued", "running"])
@pytest.mark.parametrize("waited, expected", [(119, False), (121, True)])
def test_by_default_the_scheduler_has_cluster_start_timeout_from_creation(job, waited, expected):
    assert scheduler_timed_out(DEFAULT, CREATED + waited, CREATED, job) is expected


@pytest.mark.parametrize("ran, expected", [(119, False), (121, True)])
def test_queue_aware_counts_a_running_scheduler_from_its_jobs_start(ran, expected):
    # It waited 50 s in the queue: by the cluster's age it would be over 120 s already.
    now = RUNNING.running_since + ran
    assert scheduler_timed_out(QUEUE_AWARE, now, CREATED, RUNNING) is expected


@pytest.mark.parametrize("job", [None, PENDING], ids=["unpolled", "queued"])
@pytest.mark.parametrize("waited, expected", [(121, False), (3599, False), (3601, True)])
def test_queue_aware_lets_a_queued_scheduler_wait_up_to_the_queue_timeout(job, waited, expected):
    assert scheduler_timed_out(QUEUE_AWARE, CREATED + waited, CREATED, job) is expected


# -- worker start timeout ------------------------------------------------------------------


@pytest.mark.parametrize("waited", [301, 86400 * 7])
def test_a_queued_worker_never_times_out(waited):
    queued = JobInfo("7_0", state="PENDING", reason="Resources")
    assert not worker_start_timed_out(DEFAULT, CREATED + waited, queued)


def test_an_unknown_worker_job_does_not_time_out():
    assert not worker_start_timed_out(DEFAULT, CREATED + 86400, None)


@pytest.mark.parametrize("ran, expected", [(299, False), (301, True)])
def test_a_running_worker_has_worker_start_timeout_to_connect(ran, expected):
    job = JobInfo("7_0", state="RUNNING", running_since=CREATED)
    assert worker_start_timed_out(DEFAULT, CREATED + ran, job) is expected


# -- heartbeats and liveness ---------------------------------------------------------------


@pytest.mark.parametrize("silent, expected", [(0, False), (29.9, False), (30.1, True), (600, True)])
def test_heartbeat_is_in_milliseconds_and_the_timeout_in_seconds(silent, expected):
    now = 1_700_000_000.0
    last_heartbeat_ms = int((now - silent) * 1000)
    assert heartbeat_overdue(last_heartbeat_ms, now, timeout=30) is expected


@pytest.mark.parametrize(
    "state, alive",
    [
        ("SUBMITTED", True),
        ("UNKNOWN", True),
        ("PENDING", True),
        ("RUNNING", True),
        ("COMPLETING", True),
        ("COMPLETED", False),
        ("FAILED", False),
        ("OUT_OF_MEMORY", False),
        ("CANCELLED", False),
        ("TIMEOUT", False),
        # The machine's fault: replaced by the poll without counting a failure.
        ("NODE_FAIL", True),
        ("PREEMPTED", True),
        ("BOOT_FAIL", True),
    ],
)
def test_is_alive(state, alive):
    assert is_alive(JobInfo("42", state=state)) is alive


def test_a_job_slurm_told_us_nothing_about_is_alive():
    assert is_alive(None)


# -- why a cluster failed ------------------------------------------------------------------


def test_failure_before_the_scheduler_job_was_submitted():
    cluster = replace(CLUSTER, job_id="", log_directory="")
    message, log = cluster_failure(cluster, JobInfo("", state="UNKNOWN"), DEFAULT)
    assert message == "Cluster c0ffee failed before its scheduler job was submitted"
    assert log is None


@pytest.mark.parametrize(
    "job, facts",
    [
        (
            JobInfo("42", "FAILED", exit_code="1:0", nodes="n1", elapsed="00:00:05"),
            "scheduler job 42 FAILED (exit 1:0) on n1 after 00:00:05",
        ),
        (
            JobInfo("42", "OUT_OF_MEMORY", exit_code="0:125", reason="OutOfMemory", nodes="n2"),
            "scheduler job 42 OUT_OF_MEMORY (exit 0:125) on n2",
        ),
        (
            JobInfo("42", "CANCELLED", cancelled_by="1001", exit_code="0:15"),
            "scheduler job 42 CANCELLED by uid 1001 (exit 0:15)",
        ),
        (
            JobInfo("42", "TIMEOUT", exit_code="0:0", elapsed="1-00:00:12"),
            "scheduler job 42 TIMEOUT (exit 0:0) after 1-00:00:12; "
            "the cluster reached its walltime (1-00:00:00)",
        ),
    ],
    ids=["failed", "oom", "cancelled", "timeout"],
)
@pytest.mark.parametrize("started", [False, True])
def test_an_ended_scheduler_job_is_described_with_its_log(job, facts, started):
    cluster = replace(CLUSTER, scheduler_started=started)
    message, log = cluster_failure(cluster, job, DEFAULT)
    assert log == f"{LOGS}/scheduler-42.log"
    assert message == f"Cluster c0ffee failed: {facts}. Log: {log}"
    assert "cancelled" not in message.replace("CANCELLED", "")


@pytest.mark.parametrize(
    "policy, limit", [(DEFAULT, "120 s"), (QUEUE_AWARE, "3600 s")], ids=["default", "queue-aware"]
)
def test_a_scheduler_still_in_the_queue_names_the_limit_it_exceeded(policy, limit):
    message, log = cluster_failure(CLUSTER, PENDING, policy)
    assert message == (
        f"Cluster c0ffee failed: the scheduler did not start within {limit}: "
        "scheduler job 42 PENDING (reason: Priority, expected start: 2026-01-01T13:00:00); "
        f"the job was cancelled. Log: {LOGS}/scheduler-42.log"
    )
    assert log == f"{LOGS}/scheduler-42.log"


def test_a_queued_scheduler_without_reason_or_expected_start():
    message, _ = cluster_failure(CLUSTER, JobInfo("42", "PENDING"), DEFAULT)
    assert "scheduler job 42 PENDING (reason: None); the job was cancelled" in message


@pytest.mark.parametrize("policy", [DEFAULT, QUEUE_AWARE], ids=["default", "queue-aware"])
def test_a_running_scheduler_that_never_contacted_the_gateway(policy):
    message, log = cluster_failure(CLUSTER, RUNNING, policy)
    assert message == (
        "Cluster c0ffee failed: the scheduler did not contact the gateway within 120 s: "
        f"scheduler job 42 RUNNING on n1 after 0:10; the job was cancelled. Log: {log}"
    )
    assert log == f"{LOGS}/scheduler-42.log"


@pytest.mark.parametrize(
    "last, shown",
    [
        ("worker job 7_2 FAILED (exit 127:0) on n3", "worker job 7_2 FAILED (exit 127:0) on n3"),
        ("", "no details"),
    ],
)
def test_too_many_worker_start_failures_point_to_the_log_directory(last, shown):
    cluster = replace(
        CLUSTER, scheduler_started=True, worker_start_failures=3, last_worker_failure=last
    )
    message, log = cluster_failure(cluster, RUNNING, DEFAULT)
    assert message == (
        f"Cluster c0ffee failed: 3 workers in a row failed to start, last: {shown}. Logs: {LOGS}"
    )
    assert log is None


def test_heartbeats_stopped_below_the_worker_failure_limit():
    cluster = replace(CLUSTER, scheduler_started=True, worker_start_failures=2)
    message, log = cluster_failure(cluster, RUNNING, DEFAULT)
    assert message == (
        "Cluster c0ffee failed: the scheduler stopped sending heartbeats: "
        f"scheduler job 42 RUNNING on n1 after 0:10; the job was cancelled. Log: {log}"
    )
    assert log == f"{LOGS}/scheduler-42.log"


# -- helpers for messages ------------------------------------------------------------------


def test_last_log_line_goes_before_the_log_path():
    reason = f"Cluster c0ffee failed: scheduler job 42 FAILED (exit 1:0). Log: {LOGS}/s.log"
    assert with_last_log_line(reason, "ImportError: no module named dask") == (
        "Cluster c0ffee failed: scheduler job 42 FAILED (exit 1:0); "
        f"last log line: ImportError: no module named dask. Log: {LOGS}/s.log"
    )


def test_last_log_line_is_appended_to_a_message_without_a_log():
    reason = f"Cluster c0ffee failed: 3 workers in a row failed to start. Logs: {LOGS}"
    assert with_last_log_line(reason, "boom") == f"{reason}; last log line: boom"


class PublicError(Exception):
    pass


def test_a_public_error_shows_its_message():
    message = start_failure("c0ffee", PublicError("sbatch: error: invalid account"), (PublicError,))
    assert message == "Cluster c0ffee failed: sbatch: error: invalid account"


def test_another_error_shows_its_repr():
    message = start_failure("c0ffee", KeyError("log_directory"), (PublicError,))
    assert message == "Cluster c0ffee failed: KeyError('log_directory')"


def test_worker_start_failure_says_the_job_ran_but_never_connected():
    job = JobInfo("7_1", "RUNNING", nodes="n4", elapsed="5:01", running_since=CREATED)
    assert worker_start_failure(job, 300.4) == (
        "worker job 7_1 RUNNING on n4 after 5:01 but its worker did not connect within 300 s"
    )


def test_scheduler_log_path():
    assert scheduler_log(LOGS, "42") == f"{LOGS}/scheduler-42.log"


def test_a_cluster_without_a_log_directory_names_no_log():
    # A record from before log directories (or a hand-edited one): no made-up path.
    facts = replace(CLUSTER, log_directory="", scheduler_started=True)
    failed = JobInfo("42", state="FAILED", exit_code="1:0")
    message, log_file = cluster_failure(facts, failed, DEFAULT)
    assert log_file is None
    assert "Log" not in message and "/scheduler-42.log" not in message
    assert "42" in message and "FAILED" in message
    workers = replace(facts, worker_start_failures=3, last_worker_failure="worker job 43 FAILED")
    message, log_file = cluster_failure(workers, RUNNING, DEFAULT)
    assert log_file is None and message.endswith("last: worker job 43 FAILED")
