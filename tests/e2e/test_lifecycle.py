"""SLURM-aware lifecycle: facts in every failure, queue-aware starts, replaced workers,
walltime-aware workers, logs that outlive the cluster (issue 3)."""

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import PREFIX, RUNUSER, depot, run, user_jobs, wait_until

FAKE_DIST = "Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"


def _fake_env(path: Path, packages: dict[str, str]):
    """A venv whose metadata claims the given packages (all the check reads)."""
    shutil.rmtree(path, ignore_errors=True)
    out = run(
        [RUNUSER, "-u", "alice", "--", "/usr/bin/python3", "-m", "venv", "--without-pip", str(path)]
    )
    assert out.returncode == 0, out.stderr
    site = next((path / "lib").glob("python3*/site-packages"))
    for name, version in packages.items():
        dist = site / f"{name.replace('-', '_')}-{version}.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(FAKE_DIST.format(name=name, version=version))
    run(["chown", "-R", "alice:alice", str(path)])


@pytest.fixture(scope="module")
def bad_envs():
    base = depot("alice", "envs")
    (base / "empty").mkdir(exist_ok=True)
    shutil.chown(base / "empty", "alice")
    _fake_env(base / "no-gateway", {"dask": "2026.8.0", "distributed": "2026.8.0"})
    _fake_env(
        base / "old-gateway",
        {"dask": "2026.8.0", "distributed": "2026.8.0", "dask-gateway": "2024.1.0"},
    )
    private = depot("bob", "private")  # bob's own, closed to others
    private.chmod(0o700)
    return {
        "missing": (str(base / "does-not-exist"), "does not exist"),
        "not a python env": (str(base / "empty"), "not a python environment"),
        "dask-gateway missing": (str(base / "no-gateway"), "lacks dask-gateway"),
        "incompatible": (str(base / "old-gateway"), "does not match this gateway"),
        "unreadable": (str(private / "env"), "not readable by you"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "not a python env", "dask-gateway missing", "incompatible", "unreadable"]
)
def test_bad_conda_env_fails_in_seconds_naming_the_fix(as_user, bad_envs, case):
    prefix, message = bad_envs[case]
    result = as_user(
        "alice",
        f"""
        gateway = Gateway()
        started = time.monotonic()
        error = error_of(gateway.new_cluster, conda_env={prefix!r})
        report(error=error, seconds=time.monotonic() - started)
        """,
    )
    assert result["error"].startswith("ValueError"), result["error"]
    assert message in result["error"] and prefix in result["error"]
    assert result["seconds"] < 5
    assert user_jobs("alice") == []


def test_an_unchanged_env_is_checked_once_and_a_changed_one_again(as_user, gateway):
    """The env check is reused for the same user and an unchanged env (issue 13), and any
    change to the env (here its packages go) checks it again."""
    prefix = depot("alice", "envs") / "cached"
    _fake_env(prefix, {})
    default_site = next((PREFIX / "envs" / "default" / "lib").glob("python3*/site-packages"))
    site = next((prefix / "lib").glob("python3*/site-packages"))
    link = site / "default-env.pth"
    link.write_text(f"{default_site}\n")
    env = repr(str(prefix))
    hits = f"conda_env {prefix} of user alice: unchanged since it passed"
    before = gateway.log.read_text().count(hits)
    started = as_user(
        "alice",
        f"""
        for _ in range(2):
            Gateway().new_cluster(conda_env={env}).shutdown()
        report(started=2)
        """,
    )
    assert started == {"started": 2}
    assert gateway.log.read_text().count(hits) == before + 1  # the second cluster's
    link.unlink()  # its packages are gone: site-packages changed
    result = as_user("alice", f"report(error=error_of(Gateway().new_cluster, conda_env={env}))")
    assert "lacks dask" in result["error"], result
    assert user_jobs("alice") == []


def test_queue_aware_start_keeps_a_pending_scheduler(as_user, make_gateway):
    gw = make_gateway(
        "c.SlurmBackend.queue_aware_start = True\n"
        "c.SlurmBackend.cluster_start_timeout = 10\n"
        "c.SlurmBackend.scheduler_queue_timeout = 300\n"
    )
    subprocess.run(["scontrol", "update", "partitionname=schedulers", "state=down"], check=True)
    outcome = {}

    def client():
        outcome.update(
            as_user(
                "alice",
                """
                cluster = Gateway().new_cluster()
                cluster.scale(1)
                value = cluster.get_client().submit(sum, [1, 2, 3]).result(timeout=120)
                cluster.shutdown()
                report(value=value)
                """,
                via=gw,
            )
        )

    thread = threading.Thread(target=client)
    try:
        thread.start()
        time.sleep(20)  # twice the start timeout, all of it pending in the queue
        pending = user_jobs("alice")
        assert len(pending) == 1 and "PENDING" in pending[0], pending
    finally:
        subprocess.run(["scontrol", "update", "partitionname=schedulers", "state=up"], check=True)
        thread.join(120)
    assert outcome == {"value": 6}


def test_scheduler_cancelled_from_outside_fails_the_cluster_with_the_reason(as_user, gateway):
    made = as_user(
        "alice",
        "report(name=running_cluster(1))",
    )
    scheduler = [line.split()[0] for line in user_jobs("alice") if "scheduler" in line]
    assert len(scheduler) == 1
    subprocess.run(["scancel", scheduler[0]], check=True)
    result = as_user(
        "alice",
        f"""
        gateway = Gateway()
        started = time.monotonic()
        while not any(c.name == {made["name"]!r} and c.status.name == "FAILED"
                      for c in gateway.list_clusters(status="FAILED")):
            time.sleep(0.2)
        seconds = time.monotonic() - started
        report(seconds=seconds, error=error_of(gateway.connect, {made["name"]!r}))
        """,
    )
    # the test gateway polls every second: known within two polls (+ the client's own start)
    assert result["seconds"] < 4, result
    assert f"scheduler job {scheduler[0]} CANCELLED" in result["error"], result["error"]
    assert wait_until(lambda: not user_jobs("alice"), 30), user_jobs("alice")


def test_workers_on_a_failed_node_are_replaced_without_counting(as_user, make_gateway):
    gw = make_gateway(
        "c.SlurmBackend.worker_start_failure_limit = 1\n"  # one counted failure would kill it
        'c.SlurmClusterConfig.worker_extra_directives = ["--exclude=n3"]\n'
    )
    made = as_user(
        "alice",
        "report(name=running_cluster(3))",
        via=gw,
    )
    nodes = run(["squeue", "-h", "-u", "alice", "-n", "dask-gateway-worker", "-o", "%N"])
    victim = nodes.stdout.split()[0]
    subprocess.run(
        ["scontrol", "update", f"nodename={victim}", "state=down", "reason=test"], check=True
    )
    try:
        # SLURM ends the jobs NODE_FAIL; the gateway replaces them without counting.
        assert wait_until(
            lambda: "replacing it (not counted as a failure)" in gw.log.read_text(), 30
        )
        result = as_user(
            "alice",
            f"""
            gateway = Gateway()
            cluster = gateway.connect({made["name"]!r})
            client = cluster.get_client()
            client.wait_for_workers(3, timeout=120)
            total = sum(client.gather(client.map(lambda x: x * x, range(100))))
            cluster.shutdown()
            report(total=total)
            """,
            via=gw,
        )
    finally:
        # ReturnToService=2 may already have brought it back; resume is then refused.
        subprocess.run(["scontrol", "update", f"nodename={victim}", "state=resume"])
    assert result["total"] == sum(x * x for x in range(100))
    # with a failure limit of 1, a counted failure would have failed the cluster
    assert f"Cluster {made['name']} failed" not in gw.log.read_text()
    # and accounting agrees (its records arrive a little after squeue's)
    assert wait_until(lambda: "NODE_FAIL" in _worker_states_of_alice(), 30), nodes.stdout


def _worker_states_of_alice() -> str:
    return run(
        [
            "sacct",
            "-n",
            "-X",
            "-u",
            "alice",
            "--name=dask-gateway-worker",
            "-S",
            "now-5minutes",
            "-o",
            "State,NodeList",
            "-P",
        ]
    ).stdout


def test_logs_outlive_a_failed_cluster_readable_by_owner_only(as_user, make_gateway):
    gw = make_gateway(
        "c.SlurmClusterConfig.scheduler_cmd = ['python', '-c', "
        "'print(\"this line is the evidence\"); raise SystemExit(5)']\n"
    )
    result = as_user("alice", "report(error=error_of(Gateway().new_cluster))", via=gw)
    log_file = result["error"].rsplit("Log: ", 1)[1].strip()
    as_alice = run([RUNUSER, "-u", "alice", "--", "cat", log_file])
    assert as_alice.returncode == 0 and "this line is the evidence" in as_alice.stdout
    as_bob = run([RUNUSER, "-u", "bob", "--", "cat", log_file])
    assert as_bob.returncode != 0 and "Permission denied" in as_bob.stderr


def test_walltime_aware_workers_and_cluster_end(as_user, make_gateway):
    gw = make_gateway(
        'c.SlurmClusterConfig.walltime = "4"\n'  # minutes
        'c.SlurmClusterConfig.worker_walltime = "2"\n'
        "c.SlurmBackend.worker_walltime_margin = 30\n"
    )
    result = as_user(
        "alice",
        """
        gateway = Gateway()
        cluster = gateway.new_cluster(shutdown_on_close=False, worker_memory=1)
        cluster.scale(2)
        client = cluster.get_client()
        client.wait_for_workers(2, timeout=120)
        first = set(client.scheduler_info()["workers"])

        def step(i):
            import time
            time.sleep(1)
            return i

        # ~100 s on 2 workers: longer than the first workers' lifetimes (60-90 s, at
        # least 11 s apart), well inside the cluster's 4 min. A worker leaving
        # at its lifetime hands its results to the other one; each result is also taken
        # and released as it comes, so that a turnover has little to move.
        from distributed import as_completed

        started = time.monotonic()
        total = 0
        try:
            for future in as_completed(client.map(step, range(200), pure=False)):
                total += future.result()
                future.release()
        except Exception as exc:  # the facts, if the cluster's walltime came first
            total = f"{type(exc).__name__} after {time.monotonic() - started:.0f} s: {exc}"
        later = set(client.scheduler_info()["workers"])
        name = cluster.name
        client.close()
        # The cluster ends at its walltime (4 min); the error must say so.
        error = None
        deadline = time.monotonic() + 240
        while error is None and time.monotonic() < deadline:
            time.sleep(3)
            error = error_of(gateway.connect, name)
        report(total=total, replaced=len(first - later), error=error)
        """,
        timeout=480,
        via=gw,
    )
    assert result["total"] == sum(range(200)), result["total"]
    assert result["replaced"] >= 1, "no worker left before its walltime"
    assert result["error"] and "walltime" in result["error"], result["error"]
    assert "TIMEOUT" in result["error"]


def test_pending_worker_keeps_its_place_in_the_queue(as_user, make_gateway):
    gw = make_gateway(
        "c.SlurmBackend.worker_start_timeout = 3\n"
        'c.SlurmClusterConfig.worker_extra_directives = ["--begin=now+600"]\n'
    )
    made = as_user(
        "alice",
        """
        cluster = Gateway().new_cluster(shutdown_on_close=False, worker_memory=1)
        cluster.scale(1)
        report(name=cluster.name)
        """,
        via=gw,
    )
    assert wait_until(lambda: [j for j in user_jobs("alice") if "worker" in j], 10)
    first = [j for j in user_jobs("alice") if "worker" in j]
    time.sleep(12)  # four worker start timeouts
    assert [j for j in user_jobs("alice") if "worker" in j] == first, "worker was re-submitted"
    assert "PENDING" in first[0]
    as_user("alice", f"Gateway().stop_cluster({made['name']!r}); report()", via=gw)
