"""Prometheus metrics, as an admin's real Prometheus server sees them.

A gateway with per-user metrics behind a token; Debian's Prometheus (installed by the
harness if missing) scrapes it every second. alice runs a cluster that scales up to two
workers and is refused a third cluster by her limit; root cancels the scheduler of another
of her clusters. Prometheus' HTTP API then shows the clusters started, the failed one with
its reason class, the refusal, the workers, and SLURM command latencies.
"""

import secrets
import urllib.error
import urllib.request

import pytest
from conftest import jobs_of, run, wait_until

from harness.prometheus import Prometheus

PROMETHEUS_PORT = 18700  # this test's ports (18700-18719)
METRICS_PORT = 18701
TOKEN = secrets.token_hex(16)


@pytest.fixture
def metered_gateway(make_gateway):
    return make_gateway(
        f"""
        c.SlurmBackend.metrics_address = "127.0.0.1:{METRICS_PORT}"
        c.SlurmBackend.metrics_per_user = True
        c.SlurmBackend.metrics_token = "{TOKEN}"
        c.SlurmBackend.max_clusters_per_user = 2
        c.SlurmBackend.cluster_heartbeat_period = 3  # the gateway hears of workers sooner
        c.SlurmBackend.cluster_heartbeat_timeout = 60
        """
    )


@pytest.fixture
def prometheus(metered_gateway):
    server = Prometheus(f"127.0.0.1:{METRICS_PORT}", PROMETHEUS_PORT, TOKEN)
    server.start()
    yield server
    server.stop()
    assert not server.ready(), "Prometheus still answers after stop"


def metrics_status(token: str | None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{METRICS_PORT}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_prometheus_shows_started_failed_refused_and_slurm_latencies(
    as_user, metered_gateway, prometheus
):
    gw = metered_gateway
    # Per-user metrics name users: without the token, nobody reads them.
    assert metrics_status(None) == 401
    assert metrics_status("wrong") == 401
    assert metrics_status(TOKEN) == 200
    assert wait_until(lambda: prometheus.value('up{job="slurm-gateway"}') == 1, 30), (
        prometheus.targets()
    )

    doomed = as_user(
        "alice",
        "report(name=Gateway().new_cluster(shutdown_on_close=False, worker_memory=1).name)",
        via=gw,
    )["name"]
    scaled = as_user(
        "alice",
        """
        gateway = Gateway()
        cluster = gateway.new_cluster(worker_memory=1, shutdown_on_close=False)
        cluster.scale(2)
        cluster.get_client().wait_for_workers(2, timeout=120)
        report(name=cluster.name, refused=error_of(gateway.new_cluster))  # the limit is 2
        """,
        via=gw,
    )
    assert "limit per user is 2" in (scaled["refused"] or ""), scaled
    # The gateway hears of running workers at the scheduler's next heartbeat.
    running = 'slurm_gateway_workers{state="running"}'
    assert wait_until(lambda: prometheus.value(running) == 2, 30), prometheus.query(
        "slurm_gateway_workers"
    )
    as_user("alice", f"Gateway().connect({scaled['name']!r}).shutdown(); report()", via=gw)

    [scheduler] = jobs_of(doomed, "scheduler")
    assert run(["scancel", scheduler]).returncode == 0
    cancelled = 'slurm_gateway_cluster_failures_total{reason="cancelled"}'
    assert wait_until(lambda: prometheus.value(cancelled) == 1, 60), prometheus.query(
        "slurm_gateway_cluster_failures_total > 0"
    )
    # ... the class of what alice is told:
    told = as_user("alice", f"report(error=error_of(Gateway().connect, {doomed!r}))", via=gw)
    assert f"scheduler job {scheduler} CANCELLED" in told["error"], told

    value = prometheus.value
    assert value("slurm_gateway_clusters_started_total") == 2
    assert value("slurm_gateway_cluster_time_to_running_seconds_count") == 2
    assert value("sum(slurm_gateway_cluster_failures_total)") == 1, prometheus.query(
        "slurm_gateway_cluster_failures_total > 0"
    )
    refused = 'slurm_gateway_requests_refused_total{limit="max_clusters_per_user"}'
    assert value(refused) == 1
    # Scaled up: two workers running, per user too; by now none is left.
    assert value('max_over_time(slurm_gateway_workers{state="running"}[10m])') == 2
    alice_workers = 'slurm_gateway_user_workers{user="alice",state="running"}'
    assert value(f"max_over_time({alice_workers}[10m])") == 2
    assert value('max_over_time(slurm_gateway_clusters{state="running"}[10m])') == 2
    assert wait_until(lambda: value('slurm_gateway_clusters{state="running"}') == 0, 30)
    # SLURM command latencies: samples for sbatch (2 schedulers, 1 array of workers), squeue.
    duration = "slurm_gateway_slurm_command_duration_seconds"
    assert value(f'{duration}_count{{command="sbatch"}}') >= 3
    assert value(f'{duration}_count{{command="squeue"}}') >= 5
    assert value(f'{duration}_sum{{command="sbatch"}}') > 0
    assert value(f'{duration}_count{{command="user-helper"}}') >= 2
    p90 = value(f'histogram_quantile(0.9, {duration}_bucket{{command="squeue"}})')
    assert 0 < p90 <= 60, p90
    # Queue waits of both schedulers and the two workers, SLURM and accounting up.
    assert value('slurm_gateway_queue_wait_seconds_count{role="scheduler"}') == 2
    assert value('slurm_gateway_queue_wait_seconds_count{role="worker"}') >= 2
    assert value("slurm_gateway_slurm_up") == 1
    assert value("slurm_gateway_accounting_up") == 1
    assert value('process_resident_memory_bytes{job="slurm-gateway"}') > 10e6
