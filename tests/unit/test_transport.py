"""Running commands, with real processes: output, time and the number of commands at once
are bounded whatever a command does, and a user is always reached through sudo."""

import asyncio
import glob
import os
import pwd
import shutil
import time
import tracemalloc

import pytest

from slurm_gateway.transport import MAX_SUMMARY_CHARS, CommandResult, LocalSudoRunner


def _run(runner, argv, **kwargs):
    return asyncio.run(runner.run(argv, **kwargs))


def _group_alive(pgid, within=2.0):
    """Whether a process of the group ``pgid`` still runs ``within`` seconds after being
    killed (SIGKILL is delivered asynchronously; zombies do not count: here the init
    process may be slow to reap orphans)."""
    deadline = time.monotonic() + within
    while _group_running(pgid):
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)
    return False


def _group_running(pgid):
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the process is gone
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def test_output_and_exit_code():
    result = _run(LocalSudoRunner(), ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.ok and not result.truncated and not result.stopped
    assert result.summary() == "sh exited 3: err"


def test_a_summary_is_one_readable_bounded_line_whatever_slurm_quotes():
    # SLURM's messages may quote another user's bytes (a job name, a path): terminal
    # escapes, a bidi override, a forged log line, a flood.
    hostile = "sbatch: error: job \x1b]0;owned\x07\x1b[2J\u202eevil\r\nFAKE LOG LINE\t" + "x" * 9000
    summary = CommandResult(["/usr/bin/sbatch"], 1, "", hostile).summary()
    assert summary.startswith("sbatch exited 1: sbatch: error: job ?]0;owned??[2J?evil | FAKE")
    assert summary.endswith("...") and len(summary) <= len("sbatch exited 1: ") + MAX_SUMMARY_CHARS
    assert all(char.isprintable() for char in summary), summary


def test_stdin_and_a_clean_environment_in_the_root_directory():
    result = _run(LocalSudoRunner(), ["sh", "-c", "cat; pwd; env"], stdin=b"script\n")
    assert result.ok
    assert result.stdout.splitlines()[:2] == ["script", "/"]
    assert sorted(result.stdout.splitlines()[2:]) == [
        "LANG=C.UTF-8",
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "PWD=/",
    ]


def test_a_missing_program_is_a_failed_result():
    result = _run(LocalSudoRunner(), ["/nonexistent/sbatch"])
    assert result.returncode == -1 and "could not run /nonexistent/sbatch" in result.stderr


def test_output_of_exactly_max_output_is_whole():
    result = _run(LocalSudoRunner(max_output=1024), ["head", "-c", "1024", "/dev/zero"])
    assert result.ok and len(result.stdout) == 1024


def test_a_flood_of_output_is_cut_stopped_and_not_held_in_memory():
    runner = LocalSudoRunner(max_output=2**20, timeout=30)
    tracemalloc.start()
    try:
        start = time.monotonic()
        result = _run(runner, ["sh", "-c", "yes | head -c 50000000"])
        elapsed = time.monotonic() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.truncated and not result.ok and result.returncode == -1
    assert len(result.stdout) == 2**20
    assert elapsed < 5
    # communicate() would have held the 50 MB; here at most the kept MiB and a few buffers
    assert peak < 8 * 2**20, peak
    summary = result.summary()
    assert summary.startswith("sh output cut at 1048576 bytes; the command was stopped: y | y")
    assert len(summary) < 2100


def test_a_flood_on_stderr_is_cut_too():
    result = _run(LocalSudoRunner(max_output=1024, timeout=30), ["sh", "-c", "yes >&2"])
    assert result.truncated and len(result.stderr) == 1024 and result.stdout == ""


def test_a_command_ignoring_sigterm_is_killed_with_its_process_group():
    runner = LocalSudoRunner(timeout=1)
    start = time.monotonic()
    result = _run(runner, ["sh", "-c", "echo $$; trap '' TERM; sleep 100; sleep 100"])
    elapsed = time.monotonic() - start
    assert elapsed < 4.5, elapsed
    assert result.returncode == -1 and not result.ok and not result.truncated
    assert (
        result.summary()
        == "sh timed out after 1 s; the command was stopped: " + result.stdout.strip()
    )
    assert not _group_alive(int(result.stdout))


def test_a_grandchild_holding_the_output_open_does_not_hold_the_gateway():
    runner = LocalSudoRunner(timeout=1)
    start = time.monotonic()
    result = _run(runner, ["sh", "-c", "sleep 100 & echo $$"])
    assert time.monotonic() - start < 4.5
    assert result.stopped == "timed out after 1 s"
    assert not _group_alive(int(result.stdout))


def test_at_most_max_concurrent_commands_at_once(tmp_path):
    lock, count, log = tmp_path / "lock", tmp_path / "count", tmp_path / "log"
    count.write_text("0")
    step = f"flock {lock} sh -c 'n=$(($(cat {count}) + {{}})); echo $n > {count}; echo $n >> {log}'"
    script = f"{step.format(1)}; sleep 0.05; {step.format(-1)}"
    runner = LocalSudoRunner(max_concurrent=4, timeout=60)

    async def main():
        return await asyncio.gather(*(runner.run(["sh", "-c", script]) for _ in range(100)))

    results = asyncio.run(main())
    assert all(result.ok for result in results), [r.summary() for r in results if not r.ok][:3]
    running = [int(n) for n in log.read_text().split()]
    assert len(running) == 200 and max(running) == 4 and count.read_text().strip() == "0"
    # the runner works on another event loop too (a semaphore belongs to one loop)
    assert _run(runner, ["true"]).ok


@pytest.fixture
def fake_sudo(tmp_path):
    """A sudo that only records how it was called."""
    path = tmp_path / "sudo"
    path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {tmp_path}/calls\nprintf "%s\\n" "$*"\n')
    path.chmod(0o755)
    return path


def test_a_user_is_always_reached_through_sudo_even_the_gateways_own(fake_sudo):
    me = pwd.getpwuid(os.getuid()).pw_name
    result = _run(LocalSudoRunner(sudo=str(fake_sudo)), ["id", "-un"], user=me)
    assert result.stdout == f"-n -u {me} -- id -un\n"
    assert result.argv == ["id", "-un"]


@pytest.mark.parametrize("user", ["#1001", "-u", "alice bob", "ALICE", "", "alice\n", "a" * 33])
def test_a_user_that_is_no_posix_name_is_a_programming_error(fake_sudo, user):
    with pytest.raises(ValueError):
        _run(LocalSudoRunner(sudo=str(fake_sudo)), ["id"], user=user)
    assert not (fake_sudo.parent / "calls").exists()


def test_a_real_user_through_real_sudo():
    if shutil.which("sudo") is None or os.geteuid() != 0:
        pytest.skip("needs sudo, as root")
    try:
        pwd.getpwnam("alice")
    except KeyError:
        pytest.skip("no user alice")
    result = _run(LocalSudoRunner(), ["/usr/bin/id", "-un"], user="alice")
    assert result.ok and result.stdout == "alice\n", result.summary()


def test_results_built_by_position_keep_their_meaning():
    result = CommandResult(["squeue"], 0, "out", "err")
    assert result.ok and not result.truncated and result.stopped == ""
    assert not CommandResult(["squeue"], 0, "out", "", truncated=True).ok


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, not reaped yet, counts as alive)."""
    return os.path.exists(f"/proc/{pid}")


def test_a_cancelled_command_gets_sigterm_then_is_killed_and_reaped(tmp_path):
    # Like sudo, the command relays SIGTERM to what it runs out of the gateway's reach (here
    # a process in a session of its own): SIGKILL at once would leave that running. It is
    # cancelled as soon as it runs, maybe before its start returned.
    pids = tmp_path / "pids"
    script = f"trap 'kill $c; exit' TERM; setsid sleep 300 & c=$!; echo $$ $c > {pids}; wait"

    async def cancelled():
        task = asyncio.ensure_future(LocalSudoRunner(timeout=60).run(["sh", "-c", script]))
        while not pids.exists() or len(pids.read_text().split()) < 2:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        held_up = time.monotonic() - started
        command, relayed = map(int, pids.read_text().split())
        for _ in range(300):
            if not _alive(command) and not _alive(relayed):
                break
            await asyncio.sleep(0.01)
        return held_up, command, relayed

    held_up, command, relayed = asyncio.run(cancelled())
    try:
        assert held_up < 0.5  # the caller is not kept waiting for the command's end
        assert not _alive(relayed), "what the command ran was left running"
        assert not _alive(command), "the command was not reaped"
    finally:
        for pid in (command, relayed):
            if _alive(pid):
                os.kill(pid, 9)


def test_a_cancelled_command_ignoring_sigterm_is_killed_after_the_grace(tmp_path, monkeypatch):
    monkeypatch.setattr("slurm_gateway.transport.TERM_GRACE", 0.3)
    pid_file = tmp_path / "pid"

    async def cancelled():
        runner = LocalSudoRunner(timeout=60)
        script = f"trap '' TERM; echo $$ > {pid_file}; sleep 300; sleep 300"
        task = asyncio.ensure_future(runner.run(["sh", "-c", script]))
        while not pid_file.exists() or not pid_file.read_text().strip():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        pgid = int(pid_file.read_text())
        await asyncio.sleep(1.0)
        return pgid

    pgid = asyncio.run(cancelled())
    assert not _group_alive(pgid, within=1.0)


def test_a_command_that_exits_on_sigterm_is_not_sent_sigkill(monkeypatch):
    # Once reaped, its pid is free: a SIGKILL after the grace could hit whichever process
    # group took it (another user's sudo), and a user's helper can exit on SIGTERM at will.
    import slurm_gateway.transport as transport

    sent = []

    async def stop():
        capture = transport._Capture(100, asyncio.get_running_loop())

        def signal_group(pgid, signum):
            sent.append(signum)
            capture.process_exited()  # the command exits on the first signal
            capture.connection_lost(None)

        monkeypatch.setattr(transport, "_signal_group", signal_group)
        await LocalSudoRunner()._stop(4242, capture, "env-id")
        sent.append("stopped")
        await LocalSudoRunner()._stop(4243, capture, "env-id")  # already ended: not signalled

    asyncio.run(stop())
    assert sent == [transport.signal.SIGTERM, "stopped"]
