"""Past SLURM's limits (issue 13): scale(2000) leaves as arrays within MaxArraySize, all in
the queue within seconds; under a QOS's MaxSubmitJobsPerUser the gateway submits what fits,
holds the rest, tells the user why in the cluster's report, drops held workers first when
the user scales down, and submits them as the user's jobs end or another of the user's
clusters stops."""

from __future__ import annotations

import time
from collections import Counter

from conftest import run, wait_until

from harness.slurm import submit_limit

QOS_LIMIT = 50
# Worker jobs stay queued (held by SLURM): what is measured is submission, not dask.
HELD_WORKERS = 'c.SlurmClusterConfig.worker_extra_directives = ["--hold"]\n'


def queued_tasks(user: str) -> list[str]:
    """The user's queued or running jobs, one line per array task."""
    out = run(["squeue", "-h", "--array", "-u", user, "-o", "%i"])
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_scale_2000_is_in_the_queue_within_5_s_as_arrays(as_user, make_gateway):
    gw = make_gateway(HELD_WORKERS + "c.SlurmClusterConfig.cluster_max_workers = 2000\n")
    made = as_user(
        "alice",
        """
        cluster = Gateway().new_cluster(shutdown_on_close=False, worker_memory=0.5)
        called = time.time()
        cluster.scale(2000)
        report(name=cluster.name, called=called)
        """,
        via=gw,
    )
    try:
        all_there = wait_until(lambda: len(queued_tasks("alice")) >= 2001, 30, interval=0.1)
        elapsed = time.time() - made["called"]
        tasks = queued_tasks("alice")
        arrays = Counter(t.split("_")[0] for t in tasks if "_" in t)
        assert all_there and len(tasks) == 2001, len(tasks)
        assert elapsed < 5, f"2000 workers in the queue {elapsed:.1f} s after scale()"
        # Arrays within MaxArraySize (1001 on the dev cluster), not one job per worker.
        assert max(arrays.values()) <= 1000 and 2 <= len(arrays) <= 20, arrays
    finally:
        as_user("alice", f"Gateway().stop_cluster({made['name']!r}); report()", via=gw)


def test_a_qos_submit_limit_holds_workers_in_the_gateway_until_jobs_end(as_user, make_gateway):
    gw = make_gateway(HELD_WORKERS + "c.SlurmBackend.held_retry_period = 600\n")
    with submit_limit("bob", QOS_LIMIT):
        # Another cluster of bob's first: its scheduler and 10 workers (11 jobs).
        names = as_user(
            "bob",
            """
            gateway = Gateway()
            other = gateway.new_cluster(shutdown_on_close=False, worker_memory=0.5)
            other.scale(10)
            cluster = gateway.new_cluster(shutdown_on_close=False, worker_memory=0.5)
            report(name=cluster.name, other=other.name)
            """,
            via=gw,
        )
        try:
            assert wait_until(lambda: len(queued_tasks("bob")) == 12, 30), queued_tasks("bob")
            held_and_released(as_user, gw, names["name"], names["other"])
        finally:
            for name in names.values():
                as_user("bob", f"Gateway().stop_cluster({name!r}); report()", via=gw)
            assert wait_until(lambda: not queued_tasks("bob"), 60), queued_tasks("bob")


def pending_reason(as_user, gw, name: str) -> str | None:
    return as_user(
        "bob", f"report(r=Gateway().get_cluster({name!r}).options.get('pending_reason'))", via=gw
    )["r"]


def held_and_released(as_user, gw, name: str, other: str) -> None:
    as_user("bob", f"Gateway().connect({name!r}).scale(80); report()", via=gw)
    # This cluster's scheduler and 38 workers fit beside the other's 11 jobs; 42 wait.
    assert wait_until(lambda: len(queued_tasks("bob")) == QOS_LIMIT, 30), queued_tasks("bob")
    time.sleep(2)
    assert len(queued_tasks("bob")) == QOS_LIMIT
    reasons = as_user("bob", f"""
        gateway = Gateway()
        report(
            get=gateway.get_cluster({name!r}).options.get("pending_reason"),
            listed={{c.name: c.options.get("pending_reason") for c in gateway.list_clusters()}},
        )
        """, via=gw)  # fmt: skip
    assert reasons["get"] == (
        "42 workers wait in the gateway: SLURM refused more jobs "
        "(QOSMaxSubmitJobPerUserLimit); they are submitted as your jobs end"
    ), reasons
    assert reasons["listed"] == {name: reasons["get"], other: None}

    # Ten fewer workers: ten of those waiting in the gateway are dropped, not queued jobs.
    before = set(queued_tasks("bob"))
    as_user("bob", f"Gateway().connect({name!r}).scale(70); report()", via=gw)
    assert wait_until(
        lambda: (pending_reason(as_user, gw, name) or "").startswith("32 workers wait"), 30
    ), pending_reason(as_user, gw, name)
    time.sleep(2)
    assert set(queued_tasks("bob")) == before

    # The other cluster's 10 workers end: 10 waiting workers take their place.
    as_user("bob", f"Gateway().connect({other!r}).scale(0); report()", via=gw)
    replaced = wait_until(
        lambda: len(set(queued_tasks("bob")) - before) == 10 and queued_tasks("bob"), 60
    )
    assert replaced and len(replaced) == QOS_LIMIT, queued_tasks("bob")
    reason = pending_reason(as_user, gw, name)
    assert reason.startswith("22 workers wait in the gateway"), reason

    # The other cluster stops: its scheduler's place goes to a waiting worker at once, not
    # at the next retry (held_retry_period is 600 s here).
    as_user("bob", f"Gateway().stop_cluster({other!r}); report()", via=gw)
    assert wait_until(
        lambda: (pending_reason(as_user, gw, name) or "").startswith("21 workers wait"), 30
    ), pending_reason(as_user, gw, name)
    assert len(queued_tasks("bob")) == QOS_LIMIT, queued_tasks("bob")
