"""The gateway's Prometheus metrics: failure reason classes, labels, what events record, the
gauges computed at scrape time, and the /metrics endpoint with its token."""

import asyncio
import urllib.request
from dataclasses import replace
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer
from dask_gateway_server.backends.db_base import JobStatus
from prometheus_client.parser import text_string_to_metric_families

from slurm_gateway.jobs import SlurmError
from slurm_gateway.lifecycle import ClusterFacts, StartPolicy, cluster_failure
from slurm_gateway.limits import LimitExceeded, UserLimits, admit
from slurm_gateway.metrics import (
    FAILURE_CLASSES,
    GatewayMetrics,
    StateCollector,
    command_failure_kind,
    command_label,
    failure_class,
    queue_wait,
    start_failure_class,
)
from slurm_gateway.metrics_service import (
    authorized,
    is_loopback,
    metrics_app,
    metrics_config_problem,
    serve,
)
from slurm_gateway.slurm import TERMINAL_STATES, JobInfo
from slurm_gateway.tracker import JobTracker
from slurm_gateway.transport import CommandResult, LocalSudoRunner

STARTED = ClusterFacts(
    name="c0ffee",
    job_id="42",
    scheduler_started=True,
    walltime="1-00:00:00",
    log_directory="/var/log/slurm-gateway/alice/x",
    worker_start_failures=0,
    worker_failure_limit=3,
)
NOT_STARTED = replace(STARTED, scheduler_started=False)
POLICY = StartPolicy(120, False, 3600, 300)


def ended(state: str, by: str = "") -> JobInfo:
    return JobInfo("42", state=state, exit_code="0:0", cancelled_by=by, accounted=True)


# -- failure reason classes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "job, expected",
    [
        (ended("OUT_OF_MEMORY"), "oom"),
        (ended("TIMEOUT"), "walltime"),
        (ended("DEADLINE"), "walltime"),
        (ended("NODE_FAIL"), "node_failure"),
        (ended("BOOT_FAIL"), "node_failure"),
        (ended("PREEMPTED"), "preempted"),
        (ended("CANCELLED", by="0"), "cancelled"),
        (ended("FAILED"), "scheduler_exit"),
        (ended("COMPLETED"), "scheduler_exit"),
    ],
)
def test_an_ended_scheduler_job_is_classed_by_slurms_final_state(job, expected):
    for facts in (STARTED, NOT_STARTED):
        assert failure_class(facts, job) == expected
        # ... the state the user's message names
        assert job.state in cluster_failure(facts, job, POLICY)[0]


def test_every_final_state_has_a_known_class():
    for state in TERMINAL_STATES:
        assert failure_class(STARTED, ended(state)) in FAILURE_CLASSES


@pytest.mark.parametrize(
    "facts, job, expected, said",
    [
        (NOT_STARTED, JobInfo("42", state="PENDING"), "queue_timeout", "did not start within"),
        (NOT_STARTED, JobInfo("42", state="SUBMITTED"), "queue_timeout", "did not start within"),
        (NOT_STARTED, JobInfo("42", state="RUNNING"), "start_timeout", "did not contact"),
        (
            replace(STARTED, worker_start_failures=3),
            JobInfo("42", state="RUNNING"),
            "worker_start_failures",
            "workers in a row failed",
        ),
        (STARTED, JobInfo("42", state="RUNNING"), "heartbeat_lost", "stopped sending heartbeats"),
        (STARTED, JobInfo("42", state="UNKNOWN"), "heartbeat_lost", "stopped sending heartbeats"),
        (replace(NOT_STARTED, job_id=""), JobInfo(""), "submit_refused", "before its scheduler"),
    ],
)
def test_a_cluster_whose_scheduler_did_not_end_is_classed_as_its_message_says(
    facts, job, expected, said
):
    assert failure_class(facts, job) == expected
    assert said in cluster_failure(facts, job, POLICY)[0]


@pytest.mark.parametrize(
    "error, expected",
    [
        (SlurmError("SLURM refused the job"), "submit_refused"),
        (ValueError("log directory is a link"), "user_error"),
        (KeyError("job_id"), "gateway_error"),
    ],
)
def test_a_cluster_that_could_not_be_submitted_is_classed_by_its_error(error, expected):
    assert start_failure_class(error, (SlurmError,), (SlurmError, ValueError)) == expected


# -- labels -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, label",
    [
        (["/usr/bin/sbatch", "--parsable"], "sbatch"),
        (["/usr/bin/squeue", "--noheader"], "squeue"),
        (["/opt/slurm-gateway/venv/bin/slurm-gateway-user-helper", "tail"], "user-helper"),
        (["/usr/bin/has space"], "other"),
        ([], "other"),
    ],
)
def test_commands_are_labelled_by_their_programs_name(argv, label):
    assert command_label(argv) == label


@pytest.mark.parametrize(
    "result, kind",
    [
        (CommandResult(["sbatch"], 0, "42\n", ""), None),
        (CommandResult(["sbatch"], 1, "", "error"), "exit_status"),
        (CommandResult(["squeue"], -1, "", "", stopped="timed out after 60 s"), "timeout"),
        (CommandResult(["squeue"], -1, "x", "", truncated=True, stopped="cut"), "output_limit"),
        (CommandResult(["sudo"], -1, "", "could not run sudo"), "not_started"),
    ],
)
def test_command_failures_are_classed_by_kind(result, kind):
    assert command_failure_kind(result) == kind


def test_queue_wait_is_slurms_start_minus_submit_time():
    job = JobInfo(
        "7", state="RUNNING", submit_time="2026-12-01T10:00:00", start_time="2026-12-01T10:02:05"
    )
    assert queue_wait(job) == 125
    assert queue_wait(replace(job, state="PENDING")) is None  # an expected start only
    assert queue_wait(replace(job, submit_time="Unknown")) is None


# -- what events record -----------------------------------------------------------------------


def samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple], float]:
    """Every sample of the exposition, by (name, sorted labels)."""
    text = metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_commands_record_their_latency_and_failures_by_command():
    metrics = GatewayMetrics(process_metrics=False)
    metrics.command_done(["/usr/bin/sbatch"], CommandResult(["sbatch"], 0, "1", ""), 0.3)
    metrics.command_done(["/usr/bin/sbatch"], CommandResult(["sbatch"], 1, "", "no"), 0.1)
    got = samples(metrics)
    sbatch = (("command", "sbatch"),)
    assert got["slurm_gateway_slurm_command_duration_seconds_count", sbatch] == 2
    assert got["slurm_gateway_slurm_command_duration_seconds_sum", sbatch] == pytest.approx(0.4)
    bucket = (("command", "sbatch"), ("le", "0.25"))
    assert got["slurm_gateway_slurm_command_duration_seconds_bucket", bucket] == 1
    failed = (("command", "sbatch"), ("kind", "exit_status"))
    assert got["slurm_gateway_slurm_command_failures_total", failed] == 1


def test_failures_starts_refusals_and_queue_waits_are_counted():
    metrics = GatewayMetrics(process_metrics=False)
    metrics.cluster_failed("oom")
    metrics.cluster_failed("not a class")
    metrics.cluster_started(created_ms=1_000_000, now=1_030.0)
    metrics.refused_by("max_clusters_per_user")
    running = JobInfo(
        "7", state="RUNNING", submit_time="2026-12-01T10:00:00", start_time="2026-12-01T10:00:09"
    )
    metrics.job_running(running, "scheduler")
    got = samples(metrics)
    assert got["slurm_gateway_cluster_failures_total", (("reason", "oom"),)] == 1
    assert got["slurm_gateway_cluster_failures_total", (("reason", "other"),)] == 1
    # every class is exported, at 0 until it happens: dashboards show all of them
    assert got["slurm_gateway_cluster_failures_total", (("reason", "walltime"),)] == 0
    assert got["slurm_gateway_clusters_started_total", ()] == 1
    assert got["slurm_gateway_cluster_time_to_running_seconds_sum", ()] == 30
    limit = (("limit", "max_clusters_per_user"),)
    assert got["slurm_gateway_requests_refused_total", limit] == 1
    assert got["slurm_gateway_queue_wait_seconds_sum", (("role", "scheduler"),)] == 9


def test_each_gateway_has_its_own_registry():
    first, second = GatewayMetrics(process_metrics=False), GatewayMetrics(process_metrics=False)
    first.cluster_failed("oom")
    assert samples(second)["slurm_gateway_cluster_failures_total", (("reason", "oom"),)] == 0


def test_process_metrics_are_exported():
    names = {name for name, _ in samples(GatewayMetrics())}
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total"} <= names


# -- gauges at scrape time --------------------------------------------------------------------


def fake_cluster(user: str, status: JobStatus, *workers: JobStatus):
    return SimpleNamespace(
        username=user,
        status=status,
        workers={str(i): SimpleNamespace(status=s) for i, s in enumerate(workers)},
    )


CLUSTERS = [
    fake_cluster("alice", JobStatus.RUNNING, JobStatus.RUNNING, JobStatus.RUNNING),
    fake_cluster("alice", JobStatus.SUBMITTED),
    fake_cluster("bob", JobStatus.RUNNING, JobStatus.SUBMITTED, JobStatus.STOPPED),
    fake_cluster("bob", JobStatus.FAILED, JobStatus.FAILED),  # not active: not shown
]


def with_state(per_user: bool, availability=None) -> dict:
    availability = availability or {"slurm": True, "accounting": False}
    metrics = GatewayMetrics(process_metrics=False)
    metrics.add_state(StateCollector(lambda: CLUSTERS, lambda: availability, per_user))
    return samples(metrics)


def test_clusters_and_workers_by_state_are_counted_at_scrape_time():
    got = with_state(per_user=False)
    assert got["slurm_gateway_clusters", (("state", "running"),)] == 2
    assert got["slurm_gateway_clusters", (("state", "submitted"),)] == 1
    assert got["slurm_gateway_clusters", (("state", "closing"),)] == 0
    assert got["slurm_gateway_workers", (("state", "running"),)] == 2
    assert got["slurm_gateway_workers", (("state", "submitted"),)] == 1
    assert got["slurm_gateway_slurm_up", ()] == 1
    assert got["slurm_gateway_accounting_up", ()] == 0


def test_a_part_not_heard_of_yet_has_no_up_gauge():
    got = with_state(per_user=False, availability={"slurm": False, "accounting": None})
    assert got["slurm_gateway_slurm_up", ()] == 0
    assert ("slurm_gateway_accounting_up", ()) not in got


def test_users_are_named_only_when_the_site_allows_it():
    assert not any("alice" in str(labels) for _, labels in with_state(per_user=False))
    got = with_state(per_user=True)
    alice_running = (("state", "running"), ("user", "alice"))
    assert got["slurm_gateway_user_clusters", alice_running] == 1
    assert got["slurm_gateway_user_workers", alice_running] == 2
    assert got["slurm_gateway_user_workers", (("state", "submitted"), ("user", "bob"))] == 1


# -- the sources: runner, tracker, limits -----------------------------------------------------


def test_every_command_of_the_runner_is_recorded():
    metrics = GatewayMetrics(process_metrics=False)
    runner = LocalSudoRunner()
    runner.on_command = metrics.command_done
    asyncio.run(runner.run(["/bin/false"]))
    got = samples(metrics)
    assert got["slurm_gateway_slurm_command_duration_seconds_count", (("command", "false"),)] == 1
    failed = (("command", "false"), ("kind", "exit_status"))
    assert got["slurm_gateway_slurm_command_failures_total", failed] == 1


def test_the_tracker_reports_a_job_first_seen_running_once():
    async def squeue(argv):
        row = "7|RUNNING|None|n1|0:05|2026-12-01T10:00:04|alice|2026-12-01T10:00:00\n"
        return CommandResult(argv, 0, row, "")

    seen = []
    tracker = JobTracker(squeue)
    tracker.on_running = seen.append
    tracker.track("7")
    asyncio.run(tracker.poll())
    asyncio.run(tracker.poll())
    assert [queue_wait(job) for job in seen] == [4]


@pytest.mark.parametrize(
    "limits, active, limit",
    [
        (UserLimits(max_clusters=1), [({}, 0)], "max_clusters_per_user"),
        (UserLimits(max_cores=1), [], "max_cores_per_user"),
        (UserLimits(max_memory=1), [], "max_memory_per_user"),
    ],
)
def test_a_refusal_names_the_limit(limits, active, limit):
    config = {"scheduler_cores": 2, "scheduler_memory": 2, "worker_cores": 1, "worker_memory": 1}
    with pytest.raises(LimitExceeded) as refused:
        admit(limits, active, config)
    assert refused.value.limit == limit


# -- the endpoint -----------------------------------------------------------------------------


def test_metrics_settings_are_checked():
    assert metrics_config_problem("127.0.0.1:8002", False, "") is None
    assert metrics_config_problem("", False, "") is None
    assert "host:port" in metrics_config_problem("127.0.0.1", False, "")
    assert "host:port" in metrics_config_problem("127.0.0.1:99999", False, "")
    assert "metrics_token" in metrics_config_problem("127.0.0.1:8002", True, "")
    assert metrics_config_problem("127.0.0.1:8002", True, "s3cret") is None


def test_loopback_addresses():
    assert is_loopback("127.0.0.1:8002") and is_loopback("[::1]:8002")
    assert is_loopback("localhost:8002")
    assert not is_loopback(":8002") and not is_loopback("10.0.0.5:8002")


def test_the_token_is_a_bearer_token():
    assert authorized(None, "")
    assert authorized("Bearer s3cret", "s3cret")
    assert not authorized(None, "s3cret")
    assert not authorized("Bearer wrong", "s3cret")
    assert not authorized("Basic s3cret", "s3cret")
    assert not authorized("Bearer s3cr\u00e9t", "s3cret")  # non-ASCII: refused, no error
    assert not authorized("Bearer \udcff", "s3cret")  # undecodable bytes, as aiohttp passes


def test_the_endpoint_serves_the_exposition_to_the_token_only():
    metrics = GatewayMetrics(process_metrics=False)
    metrics.cluster_failed("cancelled")

    async def scrape(headers):
        async with TestClient(TestServer(metrics_app(metrics, "s3cret"))) as client:
            response = await client.get("/metrics", headers=headers)
            return response.status, await response.text()

    status, _ = asyncio.run(scrape({}))
    assert status == 401
    status, _ = asyncio.run(scrape({"Authorization": "Bearer nope"}))
    assert status == 401
    status, text = asyncio.run(scrape({"Authorization": "Bearer s3cret"}))
    assert status == 200
    assert 'slurm_gateway_cluster_failures_total{reason="cancelled"} 1.0' in text
    assert "# TYPE slurm_gateway_slurm_command_duration_seconds histogram" in text


def test_the_metrics_are_served_on_their_own_address():
    metrics = GatewayMetrics(process_metrics=False)

    async def scrape() -> str:
        runner = await serve(metrics_app(metrics, ""), "127.0.0.1:0")
        try:
            port = runner.addresses[0][1]
            url = f"http://127.0.0.1:{port}/metrics"
            return await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
        finally:
            await runner.cleanup()

    assert "slurm_gateway_clusters_started_total 0.0" in asyncio.run(scrape())


def test_a_taken_metrics_port_never_stops_the_gateway_and_is_retried(monkeypatch, caplog):
    import logging
    import socket

    from slurm_gateway import metrics_service

    monkeypatch.setattr(metrics_service, "METRICS_RETRY_PERIOD", 0.2)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    service = metrics_service.MetricsService(
        metrics_address=f"127.0.0.1:{port}", log=logging.getLogger("test-metrics")
    )
    app = metrics_app(GatewayMetrics(process_metrics=False), "")

    async def run() -> str:
        serving = asyncio.ensure_future(service._serve_metrics(app))
        await asyncio.sleep(0.5)
        assert not serving.done()  # still trying, the gateway goes on meanwhile
        squatter.close()
        await asyncio.wait_for(serving, 5)
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            return await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
        finally:
            await service._metrics_server.cleanup()

    with caplog.at_level("ERROR"):
        assert "slurm_gateway_clusters_started_total" in asyncio.run(run())
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text
