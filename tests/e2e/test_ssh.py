"""The gateway off the login node: SLURM through SSH (SSHSudoRunner) to a real sshd on
loopback (scripts/sshd.sh: its own host key, key login only, AllowUsers slurmgw).

The gateways here cannot run SLURM's commands themselves (/usr/bin/sbatch, squeue, sacct,
scancel and scontrol are /dev/null in their mount namespace): every job they submit, watch
or cancel went through sshd, whose log counts the sessions. This module tests what only SSH
has (one connection, host keys, keepalive, sshd gone for 60 s, sshd.sh, check on the login
node); the quickstart, failure, restart and scale tests run through SSH as well (their "ssh"
parameter), and the whole suite does with SLURM_GATEWAY_TEST_TRANSPORT=ssh.
"""

import asyncio
import contextlib
import os
import re
import signal
import stat
import time
from pathlib import Path

import asyncssh
import pytest
from conftest import (
    GATEWAY,
    REPO,
    SSH_DIR,
    SSH_LOGIN_NODE,
    run,
    ssh_gateway,
    user_jobs,
    wait_until,
)

from slurm_gateway.slurm import slurm_unreachable
from slurm_gateway.ssh_transport import SSHSudoRunner

SSHD_LOG = Path("/etc/slurm-gateway-dev-sshd/sshd.log")


def sshd(action: str) -> None:
    out = run(["bash", str(REPO / "scripts" / "sshd.sh"), action])
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.fixture(scope="module", autouse=True)
def login_node():
    sshd("up")
    yield


def sshd_log_since(offset: int) -> str:
    return SSHD_LOG.read_text(errors="replace")[offset:]


def _runner(**options) -> SSHSudoRunner:
    host, port = SSH_LOGIN_NODE
    defaults = dict(
        host=host,
        port=port,
        username="slurmgw",
        known_hosts=f"{SSH_DIR}/known_hosts",
        client_keys=[f"{SSH_DIR}/id_ed25519"],
    )
    return SSHSudoRunner(**{**defaults, **options})


PWNED = "/tmp/slurm-gateway-test-pwned"
HOSTILE = ["two words", "it's", '"q"', f"x; touch {PWNED}", f"$(touch {PWNED})", "`id`", "l1\nl2"]
HOSTILE += ["", "*", "$HOME", "-n"]


def test_real_sshd_gets_literal_arguments_the_sudo_rule_and_stops_timed_out_commands(tmp_path):
    runner = _runner(timeout=2)

    async def scenario():
        printed = await runner.run(["/usr/bin/printf", "%s\\0", *HOSTILE])
        as_alice = await runner.run(["/usr/bin/id"], user="alice")  # not in the sudo rule
        started = time.monotonic()
        hung = await runner.run(["sleep", "1234.5"])
        hung_seconds = time.monotonic() - started
        left = run(["pgrep", "-f", "sleep 1234.5"]).stdout.split()
        await runner.close()
        return printed, as_alice, hung, hung_seconds, left

    printed, as_alice, hung, hung_seconds, left = asyncio.run(scenario())
    assert printed.ok and printed.stdout.split("\0")[:-1] == HOSTILE
    assert not Path(PWNED).exists()
    # sudo -n -u alice on the login node, refused there: the rule decides, as on a login node.
    assert as_alice.returncode == 1 and "password is required" in as_alice.stderr
    assert "timed out after 2 s" in hung.stopped and hung_seconds < 4
    assert left == [], "the timed-out command still runs on the login node"


def test_an_unknown_host_key_is_never_accepted(tmp_path):
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{SSH_LOGIN_NODE[0]}]:{SSH_LOGIN_NODE[1]} {key}")
    runner = _runner(known_hosts=str(known_hosts), connection_wait=3)

    async def scenario():
        result = await runner.run(["/usr/bin/id"])
        await runner.close()
        return result

    result = asyncio.run(scenario())
    assert not result.ok and slurm_unreachable(result.stderr), result
    assert "uid=" not in result.stdout


def _sshd_processes_serving_this_process() -> list[int]:
    """The sshd processes at the other end of this process's connections to the login node
    (found by port in ``ss``: the client socket is ours, the server socket theirs)."""
    out = run(["ss", "-Htnp", "state", "established"]).stdout
    host, port = SSH_LOGIN_NODE
    ours = re.findall(
        rf"{host}:(\d+)\s+{host}:{port}\s+users:\(\(\"[^\"]+\",pid={os.getpid()},", out
    )
    pids = set()
    for line in out.splitlines():
        if any(re.search(rf"{host}:{port}\s+{host}:{p}\s", line) for p in ours):
            pids |= {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
    return sorted(pids)


def test_a_silent_login_node_is_noticed_by_keepalive_and_the_connection_made_again():
    runner = _runner(timeout=20, keepalive_interval=1, keepalive_count_max=2)

    async def scenario():
        before = await runner.run(["/usr/bin/id"])
        frozen = _sshd_processes_serving_this_process()
        for pid in frozen:  # the connection stays open, but nothing answers on it
            os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            during = await runner.run(["/usr/bin/id"])
            noticed = time.monotonic() - started
            after = await runner.run(["/usr/bin/id"])
        finally:
            for pid in frozen:
                # One killed sshd's exit can take the other with it, reaped at once.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    os.kill(pid, signal.SIGCONT)
        await runner.close()
        return before, frozen, during, noticed, after

    before, frozen, during, noticed, after = asyncio.run(scenario())
    assert before.ok and frozen
    # Not the command timeout (20 s): two missed keepalives of 1 s drop the connection.
    assert not during.ok and slurm_unreachable(during.stderr) and noticed < 6, (during, noticed)
    assert after.ok and "uid=" in after.stdout


def test_a_cluster_lives_its_life_through_ssh_on_one_connection(as_user, make_gateway):
    log_offset = SSHD_LOG.stat().st_size
    gw = ssh_gateway(make_gateway)
    result = as_user(
        "alice",
        """
        gateway = Gateway()
        cluster = gateway.new_cluster(worker_memory=1)
        cluster.scale(3)
        client = cluster.get_client()
        client.wait_for_workers(3, timeout=120)
        total = sum(client.gather(client.map(lambda x: x + 1, range(30))))
        cluster.scale(1)
        deadline = time.monotonic() + 60
        while len(client.scheduler_info()["workers"]) > 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        workers_after = len(client.scheduler_info()["workers"])
        cluster.shutdown()
        report(total=total, workers_after=workers_after)
        """,
        via=gw,
        timeout=300,
    )
    assert result == {"total": sum(range(1, 31)), "workers_after": 1}
    assert wait_until(lambda: not user_jobs("alice"), 30), user_jobs("alice")
    log = sshd_log_since(log_offset)
    # One connection for everything: submissions, polls, the helper, cancellations. Its
    # login is counted by the connection's port in the whole log: the login line has been
    # seen before the offset taken at the start of the test (sshd's processes share it).
    ports = set(re.findall(r"Starting session: command for slurmgw from \S+ port (\d+)", log))
    assert len(ports) == 1, (ports, log[-3000:])
    logins = re.findall(r"Accepted publickey for slurmgw from \S+ port (\d+)", SSHD_LOG.read_text())
    assert logins.count(ports.pop()) == 1, log[-3000:]
    assert log.count("Starting session: command for slurmgw") >= 10


def test_sshd_away_for_60_s_fails_no_cluster_and_commands_resume(as_user, make_gateway):
    gw = ssh_gateway(make_gateway)
    made = as_user("alice", "report(name=running_cluster(1))", via=gw)
    connect = f"""
        gateway = Gateway()
        cluster = gateway.connect({made["name"]!r})
        client = cluster.get_client()
    """
    sshd("down")  # the listener and every session: the gateway's connection is gone
    try:
        down_since = time.monotonic()
        during = as_user(
            "alice",
            connect
            + """
        total = client.submit(sum, range(10)).result(timeout=60)
        cluster.scale(2)  # needs SLURM: the submission waits for the login node
        report(total=total, status=[c.status.name for c in gateway.list_clusters()])
        """,
            via=gw,
        )
        time.sleep(max(0.0, 60 - (time.monotonic() - down_since)))
    finally:
        sshd("up")
    after = as_user(
        "alice",
        connect
        + """
        client.wait_for_workers(2, timeout=180)
        total = sum(client.gather(client.map(lambda x: x * 3, range(30))))
        cluster.shutdown()
        report(total=total)
        """,
        via=gw,
        timeout=300,
    )
    assert during == {"total": 45, "status": ["RUNNING"]}
    assert after == {"total": sum(range(0, 90, 3))}
    log = gw.log.read_text()
    assert "SSH connection to slurmgw@127.0.0.1:18722 lost" in log
    assert "SLURM unavailable" in log
    assert f"Cluster {made['name']} failed" not in log
    assert wait_until(lambda: not user_jobs("alice"), 30), user_jobs("alice")


def test_sshd_sh_never_writes_or_reads_through_links_the_service_account_planted(tmp_path):
    # slurmgw owns ~/.ssh: links there to files of root's must not make root (sshd.sh up)
    # write them (known_hosts) nor publish them (id_ed25519.pub, copied to a 0644 file).
    ssh_dir = Path(SSH_DIR)
    targets = {name: tmp_path / f"root-{name}" for name in ("known_hosts", "id_ed25519.pub")}
    for target in targets.values():
        target.write_text("root's secret\n")
        target.chmod(0o600)
    public_key = (ssh_dir / "id_ed25519.pub").read_text()
    authorized = Path("/etc/slurm-gateway-dev-sshd/authorized_keys/slurmgw")

    def as_slurmgw(*argv: str, stdin: str | None = None) -> None:
        out = run(["runuser", "-u", "slurmgw", "--", *argv], input=stdin, cwd="/")
        assert out.returncode == 0, out.stderr

    def put_back_public_key() -> None:
        script = 'rm -f "$1" && cat >"$1"'
        as_slurmgw("sh", "-c", script, "sh", f"{ssh_dir}/id_ed25519.pub", stdin=public_key)

    try:
        for name, target in targets.items():
            as_slurmgw("ln", "-sfn", str(target), str(ssh_dir / name))
        out = run(["bash", str(REPO / "scripts" / "sshd.sh"), "up"])
        assert out.returncode != 0 and "id_ed25519.pub" in out.stderr, out.stderr
        assert "secret" not in authorized.read_text()
        # With its public key back, up writes known_hosts anew: it replaces the link.
        put_back_public_key()
        sshd("up")
        assert not (ssh_dir / "known_hosts").is_symlink()
        assert "ssh-ed25519" in (ssh_dir / "known_hosts").read_text()
    finally:
        if (ssh_dir / "id_ed25519.pub").is_symlink():
            put_back_public_key()
        as_slurmgw("rm", "-f", f"{ssh_dir}/known_hosts")
        sshd("up")
    for target in targets.values():
        assert target.read_text() == "root's secret\n"
        info = target.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o600)


def test_check_reads_the_sudo_rule_of_the_login_node_not_its_own_host(make_gateway):
    # `slurm-gateway check` where the sudo rule is not (this host's is /dev/null in its mount
    # namespace): through SSH, the rule it checks is the login node's, which works.
    gw = ssh_gateway(make_gateway, "")
    script = 'mount --bind /dev/null /etc/sudoers.d/slurm-gateway && exec "$@"'
    out = run(
        ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "sh"]
        + [GATEWAY, "check", "-f", str(gw.config)],
        timeout=300,
        cwd="/",
    )
    assert "PASS  sudo rule (width)" in out.stdout, out.stdout + out.stderr
    assert "PASS  squeue" in out.stdout, out.stdout
