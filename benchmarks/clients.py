"""Client tasks of the benchmark, run as the benchmark user.

The files of ``benchmarks/client/`` are copied to the work directory and run there as the
user with the bench venv's python (``bench_client.py TASK JSON_ARGS``). A task prints lines
starting with ``@@`` and JSON: ``checkpoint`` (answered with ``go`` on its stdin once the
callback has run), ``result`` or ``error``."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from benchmarks.host import BENCH_PYTHON, HERE, USER, BenchError
from harness.gateway import GatewayProcess
from harness.processes import command_as, log_tail, stop, user_environment

Checkpoint = Callable[[dict], None]


class Clients:
    """Runs client tasks as the benchmark user from ``root/client``."""

    def __init__(self, root: Path):
        self.directory = root / "client"
        shutil.copytree(HERE / "client", self.directory, ignore=shutil.ignore_patterns("__*"))
        self.logs = root / "client-logs"
        self.logs.mkdir()
        self.job_logs = root / "job-logs"  # for jobqueue and the floor jobs
        self.job_logs.mkdir()
        shutil.chown(self.job_logs, USER)
        for path in (self.directory, *self.directory.iterdir(), self.logs):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        self.count = 0

    def run(
        self,
        task: str,
        args: dict,
        timeout: float,
        on_checkpoint: Checkpoint | None = None,
        gateway: GatewayProcess | None = None,
    ) -> dict:
        """Run one client task as the benchmark user; return its result."""
        self.count += 1
        log_file = self.logs / f"{self.count:02d}-{task}.log"
        argv = [str(BENCH_PYTHON), str(self.directory / "bench_client.py"), task, json.dumps(args)]
        env = user_environment(USER, PYTHONUNBUFFERED="1")
        with open(log_file, "wb") as err:
            proc = subprocess.Popen(
                command_as(USER, argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=env["HOME"],
                env=env,
                start_new_session=True,
            )
        try:
            result, error = _converse(proc, time.monotonic() + timeout, on_checkpoint)
        except TimeoutError:
            raise BenchError(f"client {task} did not finish within {timeout:.0f} s") from None
        finally:
            stop(proc, signal.SIGKILL)  # and whatever it started
        if result is None:
            gateway_tail = f"\ngateway log:\n{gateway.log_tail(25)}" if gateway else ""
            raise BenchError(
                f"client {task} failed: {error or f'exit {proc.returncode}'}\n"
                f"client log ({log_file}):\n{log_tail(log_file, 25)}{gateway_tail}"
            )
        with open(log_file, "a") as out:
            out.write(f"\nresult: {json.dumps(result)}\n")
        return result


def _converse(
    proc: subprocess.Popen, deadline: float, on_checkpoint: Checkpoint | None
) -> tuple[dict | None, str | None]:
    """Read the task's messages until it ends: its result and its error (either None).
    Raises TimeoutError at ``deadline``."""
    result, error = None, None
    for message in _messages(proc, deadline):
        kind = message.pop("kind")
        if kind == "checkpoint":
            if on_checkpoint is not None:
                on_checkpoint(message)
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        elif kind == "result":
            result = message
        elif kind == "error":
            error = message["error"]
    proc.wait(60)
    return result, error


def _messages(proc: subprocess.Popen, deadline: float) -> Iterator[dict]:
    """The ``@@`` messages of the task's stdout, as dicts, until it closes."""
    buffer = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 1.0))
        if not ready:
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.startswith(b"@@"):
                yield json.loads(line[2:])
