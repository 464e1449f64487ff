"""The SSH transport without a login node: the command line a login node's shell gets (run
through real shells here), the reconnection schedule, and the runner against an in-process
SSH server (asyncssh's) that plays the login node: output and time bounds, stdin, channels
at once, host key checks, and a server that goes away and comes back.

The real sshd and SLURM are in tests/e2e/test_ssh.py."""

import asyncio
import json
import shlex
import subprocess
import time

import asyncssh
import pytest

from slurm_gateway.slurm import slurm_unreachable
from slurm_gateway.ssh_transport import SSHSudoRunner, reconnect_delay, remote_command

# Arguments a user controls (job names, paths, options) that a shell would split or expand.
HOSTILE = [
    "two words",
    "it's",
    '"double"',
    "x; touch {pwned}",
    "$(touch {pwned})",
    "`touch {pwned}`",
    "line1\nline2",
    "",
    "-n",
    "*",
    "\\",
    "tab\there",
    "$HOME",
    "a && touch {pwned}",
    "ünïcode",
]
ENV = ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"]
PORT = 18729  # the in-process SSH server (this work's ports: 18720-18729)


def _hostile(tmp_path):
    return [arg.format(pwned=tmp_path / "pwned") for arg in HOSTILE]


def _printed_args(stdout: bytes) -> list[str]:
    return stdout.decode().split("\0")[:-1]


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_every_hostile_argument_reaches_the_program_as_one_literal_argument(tmp_path, shell):
    args = _hostile(tmp_path)
    command = remote_command(["/usr/bin/printf", "%s\\0", *args], None, environment=ENV)
    out = subprocess.run([shell, "-c", command], capture_output=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert _printed_args(out.stdout) == args
    assert not (tmp_path / "pwned").exists()


def test_a_user_is_reached_through_sudo_with_the_arguments_intact(tmp_path):
    fake_sudo = tmp_path / "sudo"
    fake_sudo.write_text("#!/bin/sh\nprintf '%s\\0' \"$@\"\n")
    fake_sudo.chmod(0o755)
    args = _hostile(tmp_path)
    command = remote_command(["/usr/bin/sbatch", *args], "alice", sudo=str(fake_sudo))
    out = subprocess.run(["/bin/sh", "-c", command], capture_output=True, timeout=10)
    assert _printed_args(out.stdout) == ["-n", "-u", "alice", "--", "/usr/bin/sbatch", *args]
    assert not (tmp_path / "pwned").exists()


def test_the_command_gets_exactly_the_configured_environment_and_runs_from_root():
    command = remote_command(["/bin/sh", "-c", "env; pwd"], None, environment=ENV)
    out = subprocess.run(
        ["/bin/sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=10,
        env={"SECRET_TOKEN": "x", "PATH": "/usr/bin:/bin"},
        cwd="/tmp",
    )
    lines = out.stdout.splitlines()
    assert lines[-1] == "/"
    assert sorted(line for line in lines[:-1] if line.split("=")[0] != "PWD") == sorted(ENV)


def test_the_login_node_stops_a_command_past_its_deadline_even_without_the_gateway():
    command = remote_command(["sleep", "30"], None, environment=ENV, deadline=1, kill_after=1)
    started = time.monotonic()
    out = subprocess.run(["/bin/sh", "-c", command], timeout=10)
    assert out.returncode == 124  # coreutils timeout: the command timed out
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("item", ["NOEQUALS", "=value", "-i=x"])
def test_environment_items_that_env_would_misread_are_refused(item):
    with pytest.raises(ValueError):
        remote_command(["true"], None, environment=[item])


def test_reconnect_waits_double_up_to_the_longest():
    delays = [reconnect_delay(n, 1, 30) for n in range(8)]
    assert delays == [0, 1, 2, 4, 8, 16, 30, 30]
    assert reconnect_delay(10_000, 0.5, 60) == 60  # no overflow after a long outage


def test_a_runner_needs_a_host_and_a_known_hosts_file(tmp_path):
    with pytest.raises(ValueError, match="host"):
        SSHSudoRunner(known_hosts=str(tmp_path / "known_hosts"))
    with pytest.raises(ValueError, match="known_hosts"):
        SSHSudoRunner(host="127.0.0.1")


# -- against an in-process SSH server ---------------------------------------------------------


class FakeLoginNode:
    """An asyncssh server that runs a few pretend commands, after the shell prefix that
    :func:`remote_command` adds (``cd / && exec env -i ... timeout ... ARGV``)."""

    def __init__(self, tmp_path):
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.key_file = tmp_path / "id_ed25519"
        self.client_key.write_private_key(str(self.key_file))
        self.known_hosts = tmp_path / "known_hosts"
        self.known_hosts.write_text(
            f"[127.0.0.1]:{PORT} {self.host_key.export_public_key().decode()}"
        )
        self.server = None
        self.active = 0
        self.most_active = 0
        self.signals: list[str] = []
        self.connections: list[asyncssh.SSHServerConnection] = []

    async def start(self):
        self.server = await asyncssh.create_server(
            lambda: _Server(self),
            "127.0.0.1",
            PORT,
            server_host_keys=[self.host_key],
            authorized_client_keys=asyncssh.import_authorized_keys(
                self.client_key.export_public_key().decode()
            ),
            process_factory=self._run,
            encoding=None,
        )

    async def stop(self):
        """Stop listening and drop every connection, like a login node going away."""
        self.server.close()
        for conn in self.connections:
            conn.close()
        self.connections.clear()
        await self.server.wait_closed()

    def runner(self, **options) -> SSHSudoRunner:
        defaults = dict(
            host="127.0.0.1",
            port=PORT,
            username="slurmgw",
            known_hosts=str(self.known_hosts),
            client_keys=[str(self.key_file)],
            timeout=2,
            max_output=4096,
            reconnect_delay=0.1,
            reconnect_max=0.2,
        )
        return SSHSudoRunner(**{**defaults, **options})

    async def _run(self, process: asyncssh.SSHServerProcess):
        words = shlex.split(process.command.removeprefix("cd / && exec "))
        argv = words[words.index("timeout") + 3 :]
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            await self._command(process, argv)
        except (asyncssh.BreakReceived, asyncssh.SignalReceived) as exc:
            self.signals.append(getattr(exc, "signal", "?"))
            process.exit(143)
        except (BrokenPipeError, asyncssh.ConnectionLost, asyncssh.DisconnectError):
            pass
        finally:
            self.active -= 1

    async def _command(self, process, argv):
        name = argv[0]
        if name == "args":
            process.stdout.write(json.dumps(argv[1:]).encode())
        elif name == "cat":
            process.stdout.write(await process.stdin.read())
        elif name == "yes":
            while not process.is_closing():
                process.stdout.write(b"y\n" * 4096)
                await process.stdout.drain()
        elif name == "fail":
            process.stderr.write(b"sbatch: error: invalid partition\n")
            process.exit(1)
            return
        elif name == "hang":
            await process.stdin.read()  # EOF at once; then wait for a signal
            while True:
                await process.stdin.read()
                await asyncio.sleep(0.05)
        elif name == "hold":
            await asyncio.sleep(0.3)
        process.exit(0)


class _Server(asyncssh.SSHServer):
    def __init__(self, node: FakeLoginNode):
        self.node = node

    def connection_made(self, conn):
        self.node.connections.append(conn)


@pytest.fixture
def node(tmp_path):
    return FakeLoginNode(tmp_path)


def _scenario(node, body):
    async def main():
        await node.start()
        try:
            return await body()
        finally:
            await node.stop()

    return asyncio.run(main())


def test_output_exit_code_stderr_and_stdin_come_back(node):
    runner = node.runner()

    async def body():
        ok = await runner.run(["args", "a b", "c;d"])
        failed = await runner.run(["fail"])
        echoed = await runner.run(["cat"], stdin=b"#!/bin/sh\n#SBATCH -J x\n")
        await runner.close()
        return ok, failed, echoed

    ok, failed, echoed = _scenario(node, body)
    assert ok.ok and json.loads(ok.stdout) == ["a b", "c;d"]
    assert failed.returncode == 1 and "invalid partition" in failed.stderr
    assert not slurm_unreachable(failed.stderr)  # a refusal is not an outage
    assert echoed.stdout == "#!/bin/sh\n#SBATCH -J x\n"


def test_endless_output_is_cut_at_max_output_and_the_command_stopped(node):
    runner = node.runner(max_output=4096, timeout=20)

    async def body():
        started = time.monotonic()
        result = await runner.run(["yes"])
        elapsed = time.monotonic() - started
        await runner.close()
        return result, elapsed

    result, elapsed = _scenario(node, body)
    assert not result.ok and result.truncated
    assert len(result.stdout) == 4096
    assert "output cut at 4096 bytes" in result.summary()
    assert elapsed < 5  # stopped at once, not at the timeout


def test_a_hanging_command_is_signalled_and_reported_after_the_timeout(node):
    runner = node.runner(timeout=1)

    async def body():
        started = time.monotonic()
        result = await runner.run(["hang"])
        return result, time.monotonic() - started

    result, elapsed = _scenario(node, body)
    assert result.returncode == -1 and "timed out after 1 s" in result.stopped
    assert 1 <= elapsed < 4
    assert node.signals[:1] == ["TERM"]


def test_a_cancelled_command_is_signalled_as_a_timed_out_one_is(node):
    runner = node.runner(timeout=60)

    async def body():
        task = asyncio.ensure_future(runner.run(["hang"]))
        await _until(lambda: node.active == 1, within=5)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        held_up = time.monotonic() - started
        await _until(lambda: node.signals, within=3)
        return held_up

    held_up = _scenario(node, body)
    assert held_up < 0.5 and node.signals[:1] == ["TERM"]  # sudo relays it to the command


async def _until(condition, within: float) -> None:
    deadline = time.monotonic() + within
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def test_channels_at_once_stay_below_max_channels(node):
    runner = node.runner(max_channels=3, max_concurrent=20)

    async def body():
        results = await asyncio.gather(*(runner.run(["hold"]) for _ in range(12)))
        await runner.close()
        return results

    results = _scenario(node, body)
    assert all(r.ok for r in results)
    assert node.most_active == 3


def test_an_unknown_host_key_is_refused(node, tmp_path):
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{PORT} {other}")
    runner = node.runner(known_hosts=str(wrong), connection_wait=1)

    async def body():
        result = await runner.run(["args", "x"])
        await runner.close()
        return result

    result = _scenario(node, body)
    assert not result.ok and slurm_unreachable(result.stderr)
    assert "slurmgw@127.0.0.1" in result.stderr


def test_while_the_login_node_is_away_commands_fail_as_slurm_unreachable_then_resume(node):
    runner = node.runner(connection_wait=0.5)

    async def main():
        await node.start()
        before = await runner.run(["args", "1"])
        await node.stop()
        await asyncio.sleep(0.3)
        started = time.monotonic()
        during = await runner.run(["args", "2"])
        waited = time.monotonic() - started
        await node.start()
        after = await _eventually(lambda: runner.run(["args", "3"]))
        await runner.close()
        await node.stop()
        return before, during, waited, after

    before, during, waited, after = asyncio.run(main())
    assert before.ok
    assert not during.ok and slurm_unreachable(during.stderr), during
    assert waited < 2  # bounded by connection_wait, not the command timeout
    assert after.ok and json.loads(after.stdout) == ["3"]


async def _eventually(make, within=10.0):
    deadline = time.monotonic() + within
    while True:
        result = await make()
        if result.ok or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.1)


def test_a_closed_port_is_reported_as_slurm_unreachable_within_the_wait(tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    runner = SSHSudoRunner(
        host="127.0.0.1", port=PORT, known_hosts=str(known_hosts), connection_wait=0.5
    )

    async def body():
        started = time.monotonic()
        result = await runner.run(["sbatch", "--parsable"], user="alice")
        await runner.close()
        return result, time.monotonic() - started

    result, elapsed = asyncio.run(body())
    assert result.returncode == -1 and slurm_unreachable(result.stderr)
    assert elapsed < 2
