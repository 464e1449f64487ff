"""Admin commands (slurm-gateway clusters, stop) and the users' slurm-gateway logs, run as
root, the service account and the real users against a real gateway and SLURM."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import (
    SERVICE_ACCOUNT,
    depot,
    jobs_of,
    run,
    user_jobs,
    wait_until,
)

from harness.processes import command_as, user_environment

GATEWAY = "/opt/slurm-gateway/venv/bin/slurm-gateway"
# A cluster without workers that outlives the client which made it.
NEW_CLUSTER = "report(name=Gateway().new_cluster(shutdown_on_close=False).name)"
LOG_ROOT = Path("/var/log/slurm-gateway")


def gateway_command(args: list[str], user: str | None = None):
    """``slurm-gateway ARGS`` as root (``user`` None) or as ``user``, from ``/``."""
    argv = [GATEWAY, *args]
    if user is None:
        return run(argv, cwd="/")
    return run(command_as(user, argv), env=user_environment(user), cwd="/")


def test_admins_list_and_stop_clusters_and_users_see_the_reason(make_gateway, as_user):
    gw = make_gateway("")
    with ThreadPoolExecutor(2) as pool:
        started = [
            pool.submit(as_user, user, "report(name=running_cluster(1))", via=gw)
            for user in ("alice", "bob")
        ]
        alice_name, bob_name = (future.result()["name"] for future in started)
    config = ["-f", str(gw.config)]
    try:
        _list_stop_and_tell(gw, as_user, alice_name, bob_name, config)
    finally:  # whatever failed, no cluster is left running
        for name in (alice_name, bob_name):
            gateway_command(["stop", name, *config])


def _list_stop_and_tell(gw, as_user, alice_name: str, bob_name: str, config: list[str]):
    """The scenario, on alice's and bob's running clusters (one worker each)."""
    [alice_scheduler] = jobs_of(alice_name, "scheduler", "alice")
    [bob_scheduler] = jobs_of(bob_name, "scheduler", "bob")
    alice_worker = wait_until(lambda: jobs_of(alice_name, "worker", "alice"), 30)

    # Root sees every user's clusters, with their jobs and SLURM's states.
    table = gateway_command(["clusters", *config])
    assert table.returncode == 0, table.stderr
    rows = {line.split()[1]: line for line in table.stdout.splitlines()[1:]}
    assert rows[alice_name].split()[:3] == ["alice", alice_name, "RUNNING"], table.stdout
    assert f"scheduler {alice_scheduler} RUNNING" in rows[alice_name]
    assert f"RUNNING {alice_worker[0]}" in rows[alice_name]
    assert rows[bob_name].split()[:3] == ["bob", bob_name, "RUNNING"]
    assert f"scheduler {bob_scheduler} RUNNING" in rows[bob_name]
    # The service account too, as JSON.
    listing = gateway_command(["clusters", "--json", *config], user=SERVICE_ACCOUNT)
    assert listing.returncode == 0, listing.stderr
    clusters = {c["name"]: c for c in json.loads(listing.stdout)}
    assert clusters[alice_name]["workers"] == [{"id": alice_worker[0], "state": "RUNNING"}]
    assert clusters[alice_name]["cores"] >= 2 and clusters[alice_name]["memory"] >= 2 << 30
    # Users cannot: the config and the state directory are closed to them.
    for args in (config, ["--state-directory", str(gw.workdir / "state")]):
        refused = gateway_command(["clusters", *args], user="alice")
        assert refused.returncode == 1 and alice_name not in refused.stdout, refused
        assert "root or" in refused.stderr, refused.stderr

    # A reason with a terminal escape is refused, and stops nothing.
    bad = gateway_command(["stop", alice_scheduler, "--reason", "x\x1b[2J", *config])
    assert bad.returncode == 1 and "U+001B" in bad.stderr, bad

    # Stopped by its scheduler job id (the secret name stays off the command line).
    stop = gateway_command(["stop", alice_scheduler, "--reason", "maintenance", *config])
    assert stop.returncode == 0, stop.stderr
    message = f"Cluster {alice_name} was stopped by an administrator: maintenance"
    assert f"Cluster {alice_name} of alice stopped" in stop.stdout and message in stop.stdout
    assert wait_until(lambda: not user_jobs("alice"), 30), user_jobs("alice")

    # alice's client is told why.
    seen = as_user(
        "alice",
        f"""
        gateway = Gateway()
        report(
            connect=error_of(gateway.connect, {alice_name!r}),
            scale=error_of(gateway.scale_cluster, {alice_name!r}, 1),
            status=gateway.get_cluster({alice_name!r}).status.name,
        )
        """,
        via=gw,
    )
    assert seen["status"] == "FAILED"
    assert seen["connect"] == seen["scale"] == f"GatewayClusterError: {message}", seen
    # The admins' listing says it too (--all: with the clusters that ended).
    after = gateway_command(["clusters", "--all", *config]).stdout.splitlines()
    [row] = [i for i, line in enumerate(after) if line.split()[:2] == ["alice", alice_name]]
    assert after[row].split()[2] == "FAILED" and after[row + 1].strip() == message, after
    # bob's cluster was left alone; stopped by name without a reason, bob is told so.
    assert bob_name in gateway_command(["clusters", *config]).stdout
    stop_bob = gateway_command(["stop", bob_name, *config])
    assert stop_bob.returncode == 0, stop_bob.stderr
    assert wait_until(lambda: not user_jobs("bob"), 30), user_jobs("bob")
    bob_seen = as_user("bob", f"report(connect=error_of(Gateway().connect, {bob_name!r}))", via=gw)
    assert bob_seen["connect"].endswith(f"Cluster {bob_name} was stopped by an administrator")


def test_users_read_their_own_latest_logs_and_never_anothers(make_gateway, as_user):
    gw = make_gateway("")
    alice_name = as_user("alice", NEW_CLUSTER, via=gw)["name"]
    try:
        [scheduler] = jobs_of(alice_name, "scheduler", "alice")
        mine = gateway_command(["logs", "-n", "200"], user="alice")
        assert mine.returncode == 0, mine.stderr
        assert mine.stdout.startswith(f"# cluster {alice_name}: {LOG_ROOT}/alice/"), mine.stdout
        assert f"/scheduler-{scheduler}.log <==" in mine.stdout
        assert "Scheduler at:" in mine.stdout, mine.stdout  # dask's own line in the log
        directory = mine.stdout.split(": ", 1)[1].splitlines()[0]
        by_name = gateway_command(["logs", alice_name, "-n", "1"], user="alice")
        assert by_name.returncode == 0 and directory in by_name.stdout, by_name
        assert len(by_name.stdout.splitlines()) == 3  # header, file header, one line

        # bob: his own logs (or none), never alice's, whichever way he asks.
        his = gateway_command(["logs"], user="bob")
        assert alice_name not in his.stdout + his.stderr and "/alice/" not in his.stdout
        for args in (
            [directory],
            [alice_name],
            ["--log-directory", f"{LOG_ROOT}/alice"],
            ["--log-directory", f"{LOG_ROOT}/{{username}}/../alice"],
        ):
            theirs = gateway_command(["logs", *args], user="bob")
            assert theirs.returncode == 1, (args, theirs.stdout)
            assert "Scheduler at" not in theirs.stdout and str(scheduler) not in theirs.stdout
    finally:
        as_user("alice", f"Gateway().connect({alice_name!r}).shutdown(); report()", via=gw)


def test_logs_do_not_follow_a_link_planted_in_the_shared_log_root():
    # mallory plants /var/log/slurm-gateway/bob (the log root is writable by all, sticky)
    # as a link to logs of her own, readable by bob: a tool following it would show bob
    # her text as his cluster's log.
    fake = depot("mallory", "fake")
    planted = fake / "20991231-235959-deadbeef"
    run(command_as("mallory", ["mkdir", "-p", "-m", "0755", str(planted)]))
    for name, text in (("CLUSTER", "c0ffee\n"), ("scheduler-1.log", "FAKE LOG of mallory\n")):
        out = run(command_as("mallory", ["tee", str(planted / name)]), input=text)
        assert out.returncode == 0, out.stderr
    os.chmod(fake, 0o755)
    bob_directory = LOG_ROOT / "bob"
    aside = Path(tempfile.mkdtemp(prefix=".bob-aside-", dir=LOG_ROOT))
    moved = bob_directory.exists()
    if moved:
        os.rename(bob_directory, aside / "bob")
    try:
        link = run(command_as("mallory", ["ln", "-s", str(fake), str(bob_directory)]))
        assert link.returncode == 0, link.stderr
        for args in ([], ["c0ffee"], [planted.name], ["--list"]):
            out = gateway_command(["logs", *args], user="bob")
            assert out.returncode == 1, (args, out.stdout)
            assert "FAKE" not in out.stdout and "c0ffee" not in out.stdout, out.stdout
            assert "symbolic link" in out.stderr, out.stderr
    finally:
        if bob_directory.is_symlink():
            bob_directory.unlink()
        if moved:
            os.rename(aside / "bob", bob_directory)
        shutil.rmtree(aside)
        shutil.rmtree(fake)
