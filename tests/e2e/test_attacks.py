"""Attacks by other users of the cluster, as the real users alice, bob and mallory.

mallory has a SLURM account but is not in dask-users: any user of the cluster, whether or
not she uses the gateway. Each test reproduces an attack that worked before the "Safe on a
shared cluster" issue and checks that it fails with nothing lost: no job of the victim
cancelled, no code run as anyone else (marker files), nothing of another user readable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import (
    RUNUSER,
    SIMPLE_AUTH,
    jobs_of,
    run,
    start_slurm_daemons,
    stop_slurm_daemon,
    user_jobs,
)

LOG_ROOT = Path("/var/log/slurm-gateway")
# A cluster without workers that outlives the client which made it.
NEW_CLUSTER = "report(name=Gateway().new_cluster(shutdown_on_close=False).name)"


def as_shell(user: str, script: str) -> subprocess.CompletedProcess:
    return run([RUNUSER, "-u", user, "--", "bash", "-c", script], cwd="/tmp")


def sbatch_as(user: str, *options: str) -> str:
    out = run([RUNUSER, "-u", user, "--", "sbatch", "--parsable", *options], cwd="/tmp")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def job_state(job_id: str) -> str:
    return run(["squeue", "--noheader", "--jobs", job_id, "--format=%T"]).stdout.strip()


@pytest.fixture
def marker_dir():
    """A directory where code run by an attack would leave files named after its uid."""
    path = Path(tempfile.mkdtemp(prefix="slurm-gateway-attack-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def planted_package(directory: Path, marker_dir: Path):
    """A fake ``distributed`` package: imported by a dask process, it leaves a marker."""
    package = directory / "distributed"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(
        f"import os\nopen('{marker_dir}/ran-as-' + str(os.getuid()), 'w').close()\n"
    )


# -- 1: the log directory ------------------------------------------------------------------


@pytest.fixture
def bobs_log_directory_removed():
    """bob has no log directory yet (as for a new user), and has one again afterwards."""
    shutil.rmtree(LOG_ROOT / "bob", ignore_errors=True)
    if (LOG_ROOT / "bob").is_symlink():
        (LOG_ROOT / "bob").unlink()
    yield
    if (LOG_ROOT / "bob").is_symlink():
        (LOG_ROOT / "bob").unlink()


def test_log_directory_planted_by_another_user_runs_nothing_as_the_victim(
    as_user, bobs_log_directory_removed, marker_dir
):
    # alice points bob's log directory at a private directory of bob's: it passes a check
    # that follows links (owned by bob, mode 0700) ...
    assert as_shell("bob", "mkdir -m 700 -p ~/private").returncode == 0
    planted = as_shell("alice", f"ln -s /home/bob/private {LOG_ROOT}/bob")
    assert planted.returncode == 0, planted.stderr
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    bob = as_user(
        "bob",
        """
        report(error=error_of(Gateway().new_cluster, shutdown_on_close=False))
        """,
    )
    # ... but bob is told, and nothing of his is submitted into a directory alice can swap.
    assert bob["error"] is not None, "bob got a cluster in a log directory alice controls"
    assert "symbolic link" in bob["error"] and f"{LOG_ROOT}/bob" in bob["error"], bob
    assert user_jobs("bob") == []
    assert not list(marker_dir.iterdir())
    assert run(["sacct", "-n", "-X", "-u", "bob", "-S", started, "-o", "JobID"]).stdout == ""


def test_log_directory_swapped_under_a_running_cluster_gets_no_job_submitted(
    as_user, gateway, bobs_log_directory_removed, marker_dir
):
    made = as_user("bob", NEW_CLUSTER)
    name = made["name"]
    trap = Path(tempfile.mkdtemp(prefix="slurm-gateway-trap-"))
    try:
        # bob's log directory goes (an admin's cleanup), and alice plants her own in its
        # place, holding code for every directory a job of bob's could start in.
        shutil.rmtree(LOG_ROOT / "bob")
        for directory in (trap / name, trap):
            planted_package(directory, marker_dir)
            directory.chmod(0o777)  # bob's job can write its log there
        run(["chown", "-R", "alice", str(trap)])
        assert as_shell("alice", f"ln -s {trap} {LOG_ROOT}/bob").returncode == 0
        as_user(
            "bob",
            f"""
            Gateway().scale_cluster({name!r}, 1)
            time.sleep(15)
            report()
            """,
        )
        assert not list(marker_dir.iterdir()), "code planted by alice ran"
        # The worker is refused each time (the cluster fails after a few refusals).
        assert "nothing was submitted" in gateway.log.read_text()
        assert [job for job in user_jobs("bob") if "worker" in job] == []
    finally:
        as_user("bob", f"Gateway().stop_cluster({name!r}); report()")
        shutil.rmtree(trap, ignore_errors=True)


# -- 2: rows forged through a job's comment --------------------------------------------------


def test_forged_squeue_rows_cancel_no_job_of_another_user(as_user, make_gateway):
    gw = make_gateway("c.SlurmBackend.orphan_check_period = 2\nc.SlurmBackend.orphan_min_age = 5\n")
    marker = f"dask-gateway@{gw.workdir / 'state'}"
    # bob has had a cluster here, so the orphan sweep looks at his jobs with our names.
    as_user("bob", "Gateway().new_cluster().shutdown(); report()", via=gw)
    victim = sbatch_as("alice", "-J", "analysis", "-o", "/dev/null", "--wrap", "sleep 300")
    # mallory (no gateway, not in dask-users) and bob name jobs like the gateway's, and put
    # rows in the gateway's squeue format into their comments: alice's job, old, with the
    # marker. Rows of today's format, and last (it wins) one of the format before.
    row = f"{victim}|PENDING|None||0:00|N/A|alice|2020-01-01T00:00:00"
    comment = "x\n" + "\n".join([f"{row}", f"{row}|{marker}", f"{row}|{marker}:gone:worker"])
    forged = [
        sbatch_as(
            user,
            "-J",
            "dask-gateway-worker",
            "--hold",
            "-o",
            "/dev/null",
            f"--comment={comment}",
            "--wrap",
            "sleep 300",
        )  # fmt: skip
        for user in ("mallory", "bob")
    ]
    try:
        time.sleep(15)  # several orphan checks
        assert job_state(victim) in ("RUNNING", "PENDING"), "alice's job was cancelled"
        accounted = run(["sacct", "-n", "-X", "-j", victim, "-o", "State%30"]).stdout
        assert "CANCELLED" not in accounted, accounted
        # The sweep did look at bob's job, and SLURM said it is not the gateway's.
        assert f"Job {forged[1]} of user bob has the gateway's job name" in gw.log.read_text()
        assert job_state(forged[1]) == "PENDING"
    finally:
        run(["scancel", victim, *forged])


def test_a_forged_failed_row_fails_no_cluster_while_accounting_is_down(as_user, make_gateway):
    gw = make_gateway("")
    made = as_user("alice", "report(name=running_cluster(1))", via=gw)
    [scheduler] = jobs_of(made["name"], "scheduler")
    stop_slurm_daemon("slurmdbd")  # no sacct to cross-check what squeue says
    try:
        row = f"{scheduler}|FAILED|None|n1|0:05|N/A|alice|2020-01-01T00:00:00|x"
        forged = sbatch_as(
            "mallory", "-J", "dask-gateway-scheduler", "--hold", "-p", "workers",
            "-o", "/dev/null", f"--comment=x\n{row}", "--wrap", "sleep 300",
        )  # fmt: skip
        time.sleep(10)
        after = as_user(
            "alice",
            f"""
            cluster = Gateway().connect({made["name"]!r})
            client = cluster.get_client()
            report(total=client.submit(sum, range(10)).result(), status=cluster.status)
            """,
            via=gw,
        )
        assert after["total"] == 45
        assert job_state(scheduler) == "RUNNING"
        run(["scancel", forged])
    finally:
        start_slurm_daemons()
        as_user("alice", f"Gateway().stop_cluster({made['name']!r}); report()", via=gw)


def test_jobs_named_like_the_gateways_cannot_blind_its_polling(as_user, make_gateway):
    # With output capped (here at 4 kB, by default 8 MiB), a poll that selected jobs by
    # name could be filled past the cap by anyone's jobs, and the gateway would take SLURM
    # for unreachable: no job end seen, no worker replaced, no orphan swept.
    gw = make_gateway("c.LocalSudoRunner.max_output = 4096\n")
    flood = sbatch_as(
        "mallory", "-J", "dask-gateway-worker", "--hold", "--array=0-199", "-o", "/dev/null",
        "--wrap", "sleep 300",
    )  # fmt: skip
    try:
        made = as_user("alice", NEW_CLUSTER, via=gw)
        [scheduler] = jobs_of(made["name"], "scheduler")
        run(["scancel", scheduler])
        after = as_user(
            "alice",
            f"""
            time.sleep(8)
            report(error=error_of(Gateway().connect, {made["name"]!r}))
            """,
            via=gw,
        )
        assert f"scheduler job {scheduler} CANCELLED" in (after["error"] or ""), after
        assert "SLURM unavailable" not in gw.log.read_text()
    finally:
        run(["scancel", flood])


# -- 3: names that are not users of the gateway ---------------------------------------------


def test_names_that_are_not_dask_users_are_refused_and_run_nothing(
    as_user, make_gateway, marker_dir
):
    # What the backend itself does with the names an authenticator passes on: this gateway
    # believes whatever name the client sends (SimpleAuthenticator, on purpose), so mallory
    # can present every name. Under munge, as on every other test gateway, she is only ever
    # mallory (checked at the end).
    gw = make_gateway(SIMPLE_AUTH)
    # mallory's environment: its "python" records who ran it.
    env = marker_dir / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text(f"#!/bin/sh\ntouch {marker_dir}/ran-as-$(id -un)\nexit 1\n")
    (env / "bin" / "python").chmod(0o755)
    env.chmod(0o755)
    names = ["slurmgw", "root", "#1001", "mallory", "daemon", "-u", "alice bob"]
    code = f"""
        from dask_gateway import BasicAuth
        results = {{}}
        for name in {names!r}:
            gateway = Gateway(auth=BasicAuth(name, "any"))
            results[name] = error_of(gateway.new_cluster, conda_env={str(env)!r})
        report(**results)
    """
    client = Path(tempfile.mkdtemp(prefix="slurm-gateway-client-")) / "client.py"
    from conftest import CLIENT_PRELUDE, PYTHON

    client.parent.chmod(0o755)
    client.write_text(CLIENT_PRELUDE + __import__("textwrap").dedent(code))
    client.chmod(0o644)
    out = subprocess.run(
        [RUNUSER, "-u", "mallory", "--", PYTHON, str(client)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/tmp",
        env={"PATH": "/usr/bin:/bin", "DASK_CONFIG": str(gw.client_config),
             "CLIENT_STACKS_AFTER": "100"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    for name in names:
        assert results[name] is not None, f"{name!r} got a cluster"
        assert "ValueError" in results[name], (name, results[name])
    assert "service account" in results["slurmgw"]
    assert "not a member of dask-users" in results["mallory"]
    # mallory as herself, through the munge gateway (no name to choose).
    herself = as_user(
        "mallory", f"report(error=error_of(Gateway().new_cluster, conda_env={str(env)!r}))"
    )
    assert "not a member of dask-users" in (herself["error"] or ""), herself
    assert sorted(p.name for p in marker_dir.iterdir()) == ["env"], "the env's python ran"
    assert user_jobs("mallory", "root", "slurmgw") == []


def test_the_sudo_rule_allows_only_what_the_gateway_runs():
    def sudo(user, *argv):
        return run([RUNUSER, "-u", "slurmgw", "--", "sudo", "-n", "-u", user, "--", *argv])

    refused = [
        ("alice", "/usr/bin/mkdir", "/tmp/made-by-slurmgw"),
        ("alice", "/usr/bin/tail", "/etc/hostname"),
        ("alice", "/usr/bin/sbatch", "--wrap", "id"),
        ("alice", "/usr/bin/scancel", "--user=alice"),
        ("alice", "/usr/bin/scancel", "--", "1", "--user=alice"),
        ("mallory", "/usr/bin/scancel", "--", "1"),
        ("mallory", "/usr/bin/sbatch", "--parsable"),
        ("mallory", "/opt/slurm-gateway/venv/bin/slurm-gateway-user-helper", "log-tail", "/x"),
        ("root", "/usr/bin/scancel", "--", "1"),
        ("root", "/usr/bin/sbatch", "--parsable"),
        ("root", "/opt/slurm-gateway/venv/bin/slurm-gateway-user-helper", "log-tail", "/x"),
    ]
    for user, *argv in refused:
        out = sudo(user, *argv)
        assert out.returncode != 0 and "sudo:" in out.stderr, (user, argv, out.stderr)
    assert not os.path.exists("/tmp/made-by-slurmgw")
    allowed = sudo("alice", "/usr/bin/scancel", "--", "999999999")
    assert "sudo:" not in allowed.stderr, allowed.stderr


# -- 4: a cluster's name, the key to its dashboard ------------------------------------------


def test_nothing_another_user_sees_names_a_cluster_or_opens_its_dashboard(as_user, gateway):
    alice = as_user(
        "alice",
        """
        cluster = Gateway().connect(running_cluster(1))
        report(name=cluster.name, dashboard=cluster.dashboard_link)
        """,
    )
    name = alice["name"]
    try:
        with urllib.request.urlopen(alice["dashboard"], timeout=10) as response:
            assert response.status == 200  # the owner's link works
        job_ids = [line.split()[0] for line in user_jobs("alice")]
        views = [
            as_shell("mallory", "squeue --all --format=%all"),
            as_shell("mallory", f"sacct --format=ALL --parsable2 --jobs {','.join(job_ids)}"),
            *(as_shell("mallory", f"scontrol show job -dd {job_id}") for job_id in job_ids),
            as_shell("mallory", "ps -eo args; ls -la /var/log/slurm-gateway/ /tmp"),
        ]
        seen = "\n".join(view.stdout + view.stderr for view in views)
        assert job_ids[0] in seen  # mallory does see alice's jobs
        assert name not in seen, "a view of mallory's shows the cluster's name"
        # Whatever in there could be a name: none opens a dashboard.
        for candidate in set(re.findall(r"[0-9a-f]{32}", seen)):
            url = f"http://{gateway.proxy}/clusters/{candidate}/status"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                status = None
            assert status != 200, candidate
    finally:
        as_user("alice", f"Gateway().stop_cluster({name!r}); report()")
