"""Failures reach the user with SLURM's facts, and leave nothing behind (the ones marked
TRANSPORTS also through SSH: the facts come back from the login node)."""

import subprocess
import time

import pytest
from conftest import (
    START_TIMEOUT,
    TRANSPORTS,
    gateway_through,
    run,
    slurm_now,
    ssh_gateway,
    submitted_since,
    user_jobs,
    wait_until,
)


@pytest.fixture
def schedulers_partition_down():
    subprocess.run(["scontrol", "update", "partitionname=schedulers", "state=down"], check=True)
    yield
    subprocess.run(["scontrol", "update", "partitionname=schedulers", "state=up"], check=True)


def test_scheduler_that_cannot_start_fails_at_the_timeout_with_slurms_reason(
    as_user, schedulers_partition_down
):
    result = as_user(
        "alice",
        """
        started = time.monotonic()
        error = error_of(Gateway().new_cluster)
        report(error=error, seconds=time.monotonic() - started)
        """,
    )
    error = result["error"]
    assert error.startswith("GatewayClusterError"), error
    assert "did not start within" in error
    assert "PENDING (reason: PartitionDown" in error
    assert "the job was cancelled" in error
    assert START_TIMEOUT - 1 <= result["seconds"] <= START_TIMEOUT + 30
    job_id = error.split("scheduler job ")[1].split()[0]
    assert job_id.isdigit()
    assert user_jobs("alice") == []


@TRANSPORTS
def test_workers_slurm_refuses_fail_the_cluster_with_sbatchs_message(
    as_user, gateway, make_gateway, transport
):
    gw = ssh_gateway(make_gateway) if transport == "ssh" else gateway
    result = as_user(
        "alice",
        """
        gateway = Gateway()
        cluster = gateway.new_cluster(worker_memory=60)
        cluster.scale(1)
        error = None
        deadline = time.monotonic() + 60
        while error is None and time.monotonic() < deadline:
            time.sleep(1)
            error = error_of(gateway.connect, cluster.name)
        report(error=error)
        """,
        via=gw,
    )
    error = result["error"]
    assert error and error.startswith("GatewayClusterError"), error
    assert "workers in a row failed to start" in error
    assert "Requested node configuration is not available" in error


@pytest.mark.parametrize(
    "options, field",
    [
        ({"conda_env": "/x; touch /tmp/slurm-gateway-pwned"}, "conda_env"),
        ({"conda_env": "$(touch /tmp/slurm-gateway-pwned)"}, "conda_env"),
        ({"conda_env": "relative/env"}, "conda_env"),
        ({"env": {"BAD NAME": "x"}}, "env"),
        ({"env": {"GOOD": "a\x00b"}}, "env"),
        ({"worker_cores": 0}, "worker_cores"),
        ({"worker_cores": 10**9}, "worker_cores"),
        ({"worker_memory": -1}, "worker_memory"),
    ],
)
def test_bad_options_are_refused_before_anything_is_submitted(as_user, options, field):
    since = slurm_now()
    started = time.monotonic()
    result = as_user(
        "alice",
        f"""
        report(error=error_of(Gateway().new_cluster, **{options!r}))
        """,
    )
    assert time.monotonic() - started < 20
    assert result["error"] is not None and result["error"].startswith("ValueError"), result
    assert field in result["error"]
    assert submitted_since("alice", since) == [], "a job was submitted for a refused request"
    assert run(["test", "-e", "/tmp/slurm-gateway-pwned"]).returncode != 0


NEW_CLUSTER = """
started = time.monotonic()
error = error_of(Gateway().new_cluster)
report(error=error, seconds=time.monotonic() - started)
"""


def test_held_scheduler_fails_at_the_timeout_naming_job_and_reason(as_user, make_gateway):
    gw = make_gateway('c.SlurmClusterConfig.scheduler_extra_directives = ["--hold"]\n')
    result = as_user("alice", NEW_CLUSTER, via=gw)
    error = result["error"]
    assert error.startswith("GatewayClusterError"), error
    assert "PENDING (reason: JobHeldUser)" in error
    assert "did not start within" in error and "the job was cancelled" in error
    assert START_TIMEOUT - 1 <= result["seconds"] <= START_TIMEOUT + 30


def test_impossible_scheduler_request_fails_at_once_with_slurms_message(as_user, make_gateway):
    gw = make_gateway('c.SlurmClusterConfig.scheduler_memory = "100 G"\n')
    result = as_user("alice", NEW_CLUSTER, via=gw)
    error = result["error"]
    assert error.startswith("GatewayClusterError"), error
    assert "Requested node configuration is not available" in error
    assert result["seconds"] < 15


@TRANSPORTS
def test_scheduler_exiting_non_zero_reports_exit_code_and_last_log_line(
    as_user, make_gateway, transport
):
    gw = gateway_through(
        transport,
        make_gateway,
        "c.SlurmClusterConfig.scheduler_cmd = ['python', '-c', "
        "'import sys; print(\"scheduler broke: bad site config\"); sys.exit(3)']\n",
    )
    result = as_user("alice", NEW_CLUSTER, via=gw)
    error = result["error"]
    assert error.startswith("GatewayClusterError"), error
    assert "FAILED (exit 3:0)" in error
    assert "last log line: scheduler broke: bad site config" in error
    assert result["seconds"] < 20


def test_scheduler_out_of_memory_is_named(as_user, make_gateway):
    gw = make_gateway('c.SlurmClusterConfig.scheduler_memory = "40 M"\n')
    result = as_user("alice", NEW_CLUSTER, via=gw)
    assert "OUT_OF_MEMORY" in result["error"], result["error"]


def test_idle_cluster_shuts_itself_down(as_user, make_gateway):
    gw = make_gateway("c.SlurmClusterConfig.idle_timeout = 5\n")
    as_user("alice", "Gateway().new_cluster(shutdown_on_close=False); report()", via=gw)
    assert user_jobs("alice"), "the cluster should be running at first"
    assert wait_until(lambda: not user_jobs("alice"), 40), user_jobs("alice")
