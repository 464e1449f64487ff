"""A gateway restart (SIGTERM for an upgrade, SIGKILL for a crash) loses nothing (issue 5),
with its state in SQLite or PostgreSQL, on the login node or off it through SSH (issue 12).

The gateway runs as a site should run it: its proxy as a service of its own, so that the
users' connections to their schedulers go on while the gateway is down.
"""

import concurrent.futures
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest
from conftest import gateway_through, jobs_of, run, user_jobs, wait_until


@pytest.mark.parametrize(
    ("sig", "db", "transport"),
    [
        pytest.param(signal.SIGTERM, "sqlite", "sudo", id="SIGTERM"),
        pytest.param(signal.SIGKILL, "sqlite", "sudo", id="SIGKILL"),
        # A crash with the state in PostgreSQL, and one off the login node (issue 12).
        pytest.param(signal.SIGKILL, "postgres", "sudo", id="SIGKILL-postgres"),
        pytest.param(signal.SIGKILL, "sqlite", "ssh", id="SIGKILL-ssh"),
    ],
)
def test_computation_goes_on_through_a_gateway_restart(as_user, make_gateway, sig, db, transport):
    gw = gateway_through(transport, make_gateway, external_proxy=True, db=db)
    flags = Path(tempfile.mkdtemp(prefix="slurm-gateway-flags-"))
    os.chmod(flags, 0o777)
    client_code = """
        def wait_for(predicate, timeout=90):
            deadline = time.time() + timeout
            while not predicate() and time.time() < deadline:
                time.sleep(0.5)
            return predicate()

        flags = os.environ["FLAGS"]
        cluster = Gateway().new_cluster(shutdown_on_close=False, worker_memory=1)
        cluster.scale(2)
        client = cluster.get_client()
        client.wait_for_workers(2, timeout=120)

        def slow(x):
            time.sleep(0.5)
            return x + 1

        futures = client.map(slow, range(60))  # about 15 s on two 1-thread workers
        open(f"{flags}/computing", "w").write(cluster.name)
        total = sum(client.gather(futures))
        finished = time.time()
        while not os.path.exists(f"{flags}/restarted"):
            time.sleep(0.2)
        # Everything works afterwards, through the restarted gateway.
        cluster.scale(3)
        client.wait_for_workers(3, timeout=120)
        cluster.adapt(minimum=1, maximum=1)
        adapted = wait_for(lambda: len(client.scheduler_info()["workers"]) == 1)
        cluster.shutdown()
        report(total=total, finished=finished, adapted=adapted)
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        result = pool.submit(as_user, "alice", client_code, env={"FLAGS": str(flags)}, via=gw)
        assert wait_until(lambda: (flags / "computing").exists() or result.done(), 120)
        assert not result.done(), result.result()
        jobs_before = sorted(user_jobs("alice"))
        gw.stop(sig=sig)
        gw.start()
        restarted = time.time()
        jobs_after_restart = sorted(user_jobs("alice"))
        (flags / "restarted").write_text("")
        after = result.result(timeout=300)
    assert after["total"] == sum(range(1, 61))
    # The computation really was under way while the gateway was down.
    assert after["finished"] > restarted, "the computation ended before the restart"
    assert after["adapted"]
    # scheduler + 2 workers, the same jobs before and after: none lost, none duplicated
    assert len(jobs_before) == 3, jobs_before
    assert jobs_after_restart == jobs_before
    assert f"Cluster {(flags / 'computing').read_text()} failed" not in gw.log.read_text()


@pytest.mark.parametrize(
    ("db", "transport"),
    [
        pytest.param("sqlite", "sudo", id="sqlite"),
        pytest.param("postgres", "sudo", id="postgres"),
        pytest.param("sqlite", "ssh", id="ssh"),
    ],
)
def test_jobs_that_ended_while_the_gateway_was_down_are_reconciled(
    as_user, make_gateway, db, transport
):
    gw = gateway_through(transport, make_gateway, db=db)
    made = as_user(
        "alice",
        "report(doomed=running_cluster(1), healed=running_cluster(2))",
        via=gw,
    )
    gw.stop(sig=signal.SIGKILL)
    # While the gateway is down: the scheduler of one cluster and a worker of the other end.
    doomed_scheduler = jobs_of(made["doomed"], "scheduler")[0]
    healed_worker = jobs_of(made["healed"], "worker")[0]
    assert run(["scancel", doomed_scheduler, healed_worker]).returncode == 0
    gw.start()
    # Reconciled before the API served anyone, or at the latest in the first polls.
    assert wait_until(lambda: f"worker job {healed_worker} CANCELLED" in gw.log.read_text(), 30)
    after = as_user(
        "alice",
        f"""
        gateway = Gateway()
        doomed = error_of(gateway.connect, {made["doomed"]!r})
        cluster = gateway.connect({made["healed"]!r})
        client = cluster.get_client()
        client.wait_for_workers(2, timeout=120)
        total = sum(client.gather(client.map(lambda x: x * 2, range(20))))
        cluster.shutdown()
        report(doomed=doomed, total=total)
        """,
        via=gw,
    )
    # The real reason, from SLURM, not "failed, see logs".
    assert f"scheduler job {doomed_scheduler} CANCELLED" in after["doomed"], after["doomed"]
    assert after["total"] == sum(range(0, 40, 2))
    assert wait_until(lambda: not user_jobs("alice"), 30)
