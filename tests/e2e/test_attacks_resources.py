"""Attacks on the gateway's resources by a user of the cluster, as the real users alice and
bob: output, processes and requests she can make as large as she likes. The rest of the
attacks, on other users and on names, are in test_attacks.py (the README's attack table
covers both).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from conftest import RUNUSER, depot, jobs_of, run, user_jobs

# A cluster without workers that outlives the client which made it.
NEW_CLUSTER = "report(name=Gateway().new_cluster(shutdown_on_close=False).name)"


def as_shell(user: str, script: str) -> subprocess.CompletedProcess:
    return run([RUNUSER, "-u", user, "--", "bash", "-c", script], cwd="/tmp")


# -- 5: output a user can make as large as she likes ----------------------------------------


def test_a_huge_log_without_newlines_does_not_grow_the_gateway(as_user, make_gateway):
    gw = make_gateway("")
    made = as_user("alice", NEW_CLUSTER, via=gw)
    [scheduler] = jobs_of(made["name"], "scheduler")
    before = gw.rss()
    # alice turns her scheduler's log into 4 GB without a newline, then kills the job.
    grown = as_shell(
        "alice",
        f"log=$(ls /var/log/slurm-gateway/alice/*/scheduler-{scheduler}.log) && "
        f"truncate -s 4G $log && scancel --signal=KILL {scheduler}",
    )
    assert grown.returncode == 0, grown.stderr
    after = as_user(
        "alice",
        f"""
        time.sleep(5)
        report(error=error_of(Gateway().connect, {made["name"]!r}))
        """,
        via=gw,
    )
    assert f"scheduler job {scheduler}" in after["error"], after
    assert gw.rss() - before < 50 * 2**20, (before, gw.rss())


# -- 6: one user flooding the gateway --------------------------------------------------------


def alices_env_with_python(name: str, script: str) -> Path:
    """An environment of alice's whose ``bin/python`` is the shell ``script``."""
    env = depot("alice", "envs") / name
    shutil.rmtree(env, ignore_errors=True)
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text("#!/bin/sh\n" + script)
    (env / "bin" / "python").chmod(0o755)
    run(["chown", "-R", "alice", str(env)])
    return env


def test_an_env_check_that_hangs_is_killed_with_everything_it_started(as_user, make_gateway):
    gw = make_gateway("c.SlurmBackend.env_check_timeout = 3\n")
    env = alices_env_with_python("hangs", "sleep 313 &\nsleep 314\n")
    result = as_user(
        "alice",
        f"""
        started = time.monotonic()
        error = error_of(Gateway().new_cluster, conda_env={str(env)!r})
        report(error=error, seconds=time.monotonic() - started)
        """,
        via=gw,
    )
    assert "did not answer within 3 s" in result["error"], result
    assert result["seconds"] < 15
    left = run(["pgrep", "-u", "alice", "-f", "sleep 31[34]"]).stdout.split()
    assert left == [], "the env check left processes behind"


def test_one_user_flooding_new_cluster_does_not_slow_the_others(as_user, make_gateway):
    gw = make_gateway("c.SlurmBackend.env_check_timeout = 20\n")
    env = alices_env_with_python("slow", "sleep 15\nexit 1\n")
    bob_code = """
        gateway = Gateway()
        started = time.monotonic()
        gateway.list_clusters()
        listed = time.monotonic() - started
        cluster = gateway.new_cluster()
        created = time.monotonic() - started - listed
        cluster.shutdown()
        report(listed=listed, created=created)
    """
    usual = as_user("bob", bob_code, via=gw)
    flood: dict = {}

    def alice_floods():
        flood.update(
            as_user(
                "alice",
                f"""
                import concurrent.futures
                gateway = Gateway()
                # Authenticated once (munge), so that the flood is one of new_cluster calls,
                # each with the gateway's cookie, not of munge credentials.
                gateway.list_clusters()
                def one(_):
                    return error_of(gateway.new_cluster, conda_env={str(env)!r})
                with concurrent.futures.ThreadPoolExecutor(200) as pool:
                    errors = list(pool.map(one, range(200)))
                report(errors=errors)
                """,
                via=gw,
                timeout=300,
            )
        )

    thread = threading.Thread(target=alice_floods)
    thread.start()
    time.sleep(3)
    during = as_user("bob", bob_code, via=gw)
    fds = len(os.listdir(f"/proc/{gw.proc.pid}/fd"))
    thread.join(300)
    assert flood, "alice's flood did not finish"
    refused = [e for e in flood["errors"] if e and "429" in e]
    assert len(refused) >= 190, flood["errors"][:5]
    assert all(e is not None for e in flood["errors"]), "alice got a cluster from a broken env"
    assert during["listed"] < usual["listed"] + 1.0, (usual, during)
    assert during["created"] < usual["created"] + 5.0, (usual, during)
    assert fds < 200, fds
    assert user_jobs("alice") == []
