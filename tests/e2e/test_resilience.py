"""Nothing lost: orphans cancelled, SLURM outages ridden out, per-user limits held (issue 5)."""

import time
from pathlib import Path

from conftest import RUNUSER, run, start_slurm_daemons, stop_slurm_daemon, user_jobs, wait_until

REPO = Path(__file__).resolve().parents[2]


def test_untracked_job_with_the_gateways_marker_is_cancelled(as_user, make_gateway):
    gw = make_gateway("c.SlurmBackend.orphan_check_period = 2\nc.SlurmBackend.orphan_min_age = 0\n")
    marker = f"dask-gateway@{gw.workdir / 'state'}"
    # Orphans are looked for among the jobs of users who have had a cluster here.
    as_user("alice", "Gateway().new_cluster().shutdown(); report()", via=gw)

    def sleeper(*options: str):
        out = run(
            [
                RUNUSER,
                "-u",
                "alice",
                "--",
                "sbatch",
                "--parsable",
                "--job-name",
                "dask-gateway-worker",
                "-o",
                "/dev/null",
                *options,
                "--wrap",
                "sleep 300",
            ]
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    # What a crash between sbatch and the database write would leave behind.
    job_id = sleeper(f"--comment={marker}")
    # A job of alice's without the marker is none of the gateway's business.
    other_id = sleeper()
    try:
        assert wait_until(
            lambda: not any(j.startswith(job_id + " ") for j in user_jobs("alice")), 20
        ), user_jobs("alice")
        assert f"Cancelling orphan jobs of user alice (no active cluster owns them): {job_id}" in (
            gw.log.read_text()
        )
        assert any(j.startswith(other_id + " ") for j in user_jobs("alice"))
    finally:
        run(["scancel", job_id, other_id])


def test_slurmctld_down_for_60_s_fails_no_cluster(as_user, make_gateway):
    gw = make_gateway("")
    made = as_user(
        "alice",
        "report(name=running_cluster(1))",
        via=gw,
    )
    connect = f"""
        gateway = Gateway()
        cluster = gateway.connect({made["name"]!r})
        client = cluster.get_client()
    """
    stop_slurm_daemon("slurmctld")
    try:
        during = as_user(
            "alice",
            connect
            + """
        total = client.submit(sum, range(10)).result(timeout=60)
        cluster.scale(2)  # needs SLURM: the submission waits for slurmctld
        report(total=total, status=[c.status.name for c in gateway.list_clusters()])
        """,
            via=gw,
        )
        time.sleep(60 - 5)
    finally:
        start_slurm_daemons()
    after = as_user(
        "alice",
        connect
        + """
        client.wait_for_workers(2, timeout=120)
        total = sum(client.gather(client.map(lambda x: x * 3, range(30))))
        cluster.shutdown()
        report(total=total)
        """,
        via=gw,
    )
    assert during == {"total": 45, "status": ["RUNNING"]}
    assert after == {"total": sum(range(0, 90, 3))}
    log = gw.log.read_text()
    assert "SLURM unavailable" in log
    assert f"Cluster {made['name']} failed" not in log


def test_slurmdbd_down_fails_no_cluster_and_failures_keep_their_facts(as_user, make_gateway):
    gw = make_gateway("")
    stop_slurm_daemon("slurmdbd")
    try:
        assert run(["sacct", "--noheader", "-X"]).returncode != 0  # accounting is really down
        made = as_user("alice", "report(doomed=running_cluster(1))", via=gw)
        doomed_scheduler = next(
            line.split()[0] for line in user_jobs("alice") if "scheduler" in line
        )
        run(["scancel", doomed_scheduler])
        during = as_user(
            "alice",
            f"""
            gateway = Gateway()
            deadline = time.time() + 30
            while time.time() < deadline and {made["doomed"]!r} in [
                c.name for c in gateway.list_clusters()
            ]:
                time.sleep(0.5)
            doomed = error_of(gateway.connect, {made["doomed"]!r})
            cluster = gateway.new_cluster(worker_memory=1)
            cluster.scale(2)
            client = cluster.get_client()
            client.wait_for_workers(2, timeout=120)
            total = sum(client.gather(client.map(lambda x: x + 1, range(40))))
            cluster.scale(1)
            deadline = time.time() + 60
            while len(client.scheduler_info()["workers"]) > 1 and time.time() < deadline:
                time.sleep(0.5)
            workers = len(client.scheduler_info()["workers"])
            cluster.shutdown()
            report(doomed=doomed, total=total, workers=workers)
            """,
            via=gw,
        )
    finally:
        start_slurm_daemons()
    assert during["total"] == sum(range(1, 41))
    assert during["workers"] == 1
    # Without accounting the facts come from squeue (finished jobs stay there MinJobAge).
    assert f"scheduler job {doomed_scheduler} CANCELLED" in during["doomed"], during["doomed"]
    log = gw.log.read_text()
    assert log.count("Health: accounting fails") == 1  # said once, not at every poll
    assert log.count(" failed: ") == 1  # only the cluster whose scheduler was cancelled


def test_concurrent_requests_cannot_both_pass_a_limit_of_one(as_user, make_gateway):
    gw = make_gateway("c.SlurmBackend.max_clusters_per_user = 1\n")
    result = as_user(
        "alice",
        """
        import threading
        outcomes = []

        def create():
            gateway = Gateway()
            try:
                outcomes.append(("ok", gateway.new_cluster(shutdown_on_close=False).name))
            except Exception as exc:
                outcomes.append(("error", f"{type(exc).__name__}: {exc}"))

        threads = [threading.Thread(target=create) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for kind, value in outcomes:
            if kind == "ok":
                Gateway().stop_cluster(value)
        report(outcomes=sorted(outcomes))
        """,
        via=gw,
    )
    (first, second) = result["outcomes"]
    assert first[0] == "error" and second[0] == "ok", result
    assert first[1].startswith("ValueError") and "limit per user is 1" in first[1]


def test_cores_limit_caps_scale_with_the_stock_message(as_user, make_gateway):
    gw = make_gateway("c.SlurmBackend.max_cores_per_user = 3\n")
    result = as_user(
        "alice",
        """
        import warnings
        cluster = Gateway().new_cluster(worker_memory=0.5)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cluster.scale(5)
        client = cluster.get_client()
        client.wait_for_workers(2, timeout=120)
        time.sleep(3)
        workers = len(client.scheduler_info()["workers"])
        cluster.shutdown()
        report(workers=workers, warnings=[str(w.message) for w in caught])
        """,
        via=gw,
    )
    assert result["workers"] == 2
    assert any("exceed resource limit of 2 workers" in w for w in result["warnings"]), result
