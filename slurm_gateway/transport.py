"""How commands reach SLURM, as the gateway's service account or as a user.

This is the one seam between the backend and the machine: the backend only ever
calls :meth:`CommandRunner.run`. :class:`LocalSudoRunner` runs commands on this
host, switching to the user with ``sudo -n -u USER``; an SSH runner for gateways
that live off the login node implements :meth:`CommandRunner.execute` the same way.

Users control what the commands run as them print and how long they take, so every
command is bounded: at most ``max_output`` bytes of each output stream are kept, at most
``timeout`` seconds are waited for, and at most ``max_concurrent`` commands run at once
for the whole gateway, whatever the number of requests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import unicodedata
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass

from traitlets import Float, Integer, List, Unicode
from traitlets.config import LoggingConfigurable

from .identity import POSIX_NAME

# Seconds a stopped command has to exit after SIGTERM before its process group gets SIGKILL,
# then to be reaped after SIGKILL, before run() gives up on it.
TERM_GRACE = 2.0
KILL_WAIT = 2.0
#: Characters of a command's output kept in its :meth:`CommandResult.summary`.
MAX_SUMMARY_CHARS = 300


def readable(text: str, max_chars: int = MAX_SUMMARY_CHARS) -> str:
    """``text`` on one line (line breaks as `` | ``), control and formatting characters
    (terminal escapes, bidi overrides) shown as ``?``, cut to ``max_chars``: what SLURM's
    commands print may quote another user's bytes (a job name, a reason, a path)."""
    lines = text[: max_chars * 16].splitlines()
    text = " | ".join(line.strip() for line in lines if line.strip())[: max_chars + 1]
    text = "".join("?" if unicodedata.category(c) in ("Cc", "Cf") else c for c in text)
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]  # the command as asked for, without the sudo prefix
    returncode: int  # -1 when the command could not start or was stopped by the gateway
    stdout: str
    stderr: str
    truncated: bool = False  # an output stream passed the runner's max_output and was cut there
    stopped: str = ""  # why the gateway stopped the command ("timed out after 60 s"), or ""

    @property
    def ok(self) -> bool:
        """Whether the command ran to its end, exited 0 and its output is whole."""
        return self.returncode == 0 and not self.truncated and not self.stopped

    def summary(self) -> str:
        """``sbatch exited 1: sbatch: error: ...`` for messages and logs: :func:`readable`,
        at most ~400 characters."""
        detail = readable(self.stderr.strip() or self.stdout.strip())
        name = os.path.basename(self.argv[0])
        if self.stopped:
            return f"{name} {self.stopped}; the command was stopped: {detail}"
        return f"{name} exited {self.returncode}: {detail}"


def stop_reason(truncated: bool, finished: bool, max_output: int, timeout: float) -> str:
    """Why a command is being stopped ("" if it is not): its output went past
    ``max_output``, or it had not finished within ``timeout``. Every transport's rule."""
    if truncated:
        return f"output cut at {max_output} bytes"
    if not finished:
        return f"timed out after {timeout:g} s"
    return ""


class CommandRunner(LoggingConfigurable):
    """Runs a command, optionally as another user. Subclass to change the transport.

    Callers use :meth:`run`; a transport implements :meth:`execute`, and must honour
    ``timeout`` and ``max_output`` there.
    """

    timeout = Float(
        60,
        help="""Seconds before a SLURM command is stopped and reported as failed (exit code -1).

        Counted from the start of the command, not from the wait for a free slot
        (max_concurrent).""",
        config=True,
    )

    max_output = Integer(
        8 * 2**20,
        min=1024,
        help="""Bytes kept of each output stream (stdout, stderr) of a command.

        A command printing more is stopped and reported as failed, its output cut here:
        users control what commands run as them print, and it is read into the
        gateway's memory.""",
        config=True,
    )

    max_concurrent = Integer(
        32,
        min=1,
        help="""Commands running at once, for the whole gateway, all users together.

        Further commands wait for a free slot. Bounds the gateway's open files and sudo
        processes however many requests arrive.""",
        config=True,
    )

    #: Called with (argv, result, seconds) after each command (the gateway's metrics).
    on_command: Callable[[list[str], CommandResult, float], None] | None = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # One semaphore per event loop: an asyncio.Semaphore belongs to the loop it is used on.
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
        self._slots = weakref.WeakKeyDictionary()

    async def run(
        self, argv: list[str], *, user: str | None = None, stdin: bytes | None = None
    ) -> CommandResult:
        """Run ``argv`` (as ``user`` if given) and return its exit code and output.

        Never raises for a failing command: callers decide what a non-zero exit means.
        Raises ValueError if ``user`` is not a plain POSIX user name: callers check the
        user with :func:`slurm_gateway.identity.user_problem` before running anything.
        """
        if user is not None and not (isinstance(user, str) and POSIX_NAME.match(user)):
            raise ValueError(f"refusing to run a command as {user!r}: not a POSIX user name")
        loop = asyncio.get_running_loop()
        slots = self._slots.get(loop)
        if slots is None:
            slots = self._slots[loop] = asyncio.Semaphore(self.max_concurrent)
        async with slots:
            started = time.monotonic()
            result = await self.execute(argv, user=user, stdin=stdin)
        if self.on_command is not None:
            self.on_command(argv, result, time.monotonic() - started)
        return result

    async def execute(
        self, argv: list[str], *, user: str | None, stdin: bytes | None
    ) -> CommandResult:
        """The transport: run one command, ``user`` already checked and a slot held."""
        raise NotImplementedError


class LocalSudoRunner(CommandRunner):
    """Run commands on this host; as another user through ``sudo -n -u USER``.

    The service account needs a sudo rule allowing exactly the commands the
    backend runs as users (``sbatch --parsable``, ``scancel`` with job ids and
    ``slurm-gateway-user-helper``), for the users allowed to use the gateway,
    without a password: ``deploy/sudoers``, quoted in the README.
    """

    sudo = Unicode("sudo", help="Path to sudo.", config=True)

    environment = List(
        ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"],
        help="""The whole environment of the commands run (NAME=value items).

        Nothing of the gateway's own environment (keys, tokens) leaks to SLURM commands.""",
        config=True,
    )

    async def execute(
        self, argv: list[str], *, user: str | None, stdin: bytes | None
    ) -> CommandResult:
        """Run ``argv`` here, through sudo whenever a user is given (even the gateway's own)."""
        full_argv = argv if user is None else [self.sudo, "-n", "-u", user, "--", *argv]
        env = dict(item.split("=", 1) for item in self.environment)
        loop = asyncio.get_running_loop()
        starting = asyncio.ensure_future(
            loop.subprocess_exec(
                lambda: _Capture(self.max_output, loop),
                *full_argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd="/",
                # Its own process group, so that stopping it reaches what it started too.
                start_new_session=True,
            )
        )
        try:
            # Shielded: a command cancelled while it starts is ended once started (below).
            transport, capture = await asyncio.shield(starting)
        except asyncio.CancelledError:
            starting.add_done_callback(lambda done: self._end_started(done, full_argv[0]))
            raise
        except OSError as exc:
            return CommandResult(argv, -1, "", f"could not run {full_argv[0]}: {exc}")
        cancelled = False
        try:
            if stdin is not None:
                pipe = transport.get_pipe_transport(0)
                pipe.write(stdin)
                pipe.close()
            await asyncio.wait(
                [capture.finished, capture.overflowed],
                timeout=self.timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            stopped = stop_reason(
                capture.truncated, capture.finished.done(), self.max_output, self.timeout
            )
            if stopped:
                await self._stop(transport.get_pid(), capture, full_argv[0])
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if cancelled and not capture.exited.done():
                # Stopped as a timed-out command is, in the background: SIGKILL at once would
                # kill sudo only, leaving the user's command running without anyone to end it.
                in_background(self._stop_and_close(transport, capture, full_argv[0]))
            else:
                if not capture.exited.done():  # _stop gave up on it
                    _signal_group(transport.get_pid(), signal.SIGKILL)
                _close(transport)
        return CommandResult(
            argv,
            -1 if stopped else transport.get_returncode(),
            capture.output[1].decode("utf-8", "replace"),
            capture.output[2].decode("utf-8", "replace"),
            truncated=capture.truncated,
            stopped=stopped,
        )

    async def _stop(self, pgid: int, capture: _Capture, program: str) -> None:
        """SIGTERM the command's process group, SIGKILL it after a grace, wait a bounded time.

        Through sudo, only the sudo process is the service account's to signal; sudo relays
        SIGTERM to the command it runs. Once the command has exited and its output is closed
        (nothing it started holds it), the group is not signalled: its pid may be another
        process group's by then, and a user's command can exit on SIGTERM at will.
        """
        if capture.finished.done():
            return
        _signal_group(pgid, signal.SIGTERM)
        await asyncio.wait([capture.finished], timeout=TERM_GRACE)
        if capture.finished.done():
            return
        _signal_group(pgid, signal.SIGKILL)
        await asyncio.wait([capture.exited], timeout=KILL_WAIT)
        if not capture.exited.done():
            self.log.warning("%s (pid %d) did not exit after SIGKILL; left behind", program, pgid)

    def _end_started(self, starting: asyncio.Future, program: str) -> None:
        if not starting.cancelled() and starting.exception() is None:
            in_background(self._stop_and_close(*starting.result(), program))

    async def _stop_and_close(self, transport, capture: _Capture, program: str) -> None:
        """End a cancelled command: :meth:`_stop`, then close its transport (the child
        watcher reaps it)."""
        try:
            await self._stop(transport.get_pid(), capture, program)
        finally:
            if not capture.exited.done():
                _signal_group(transport.get_pid(), signal.SIGKILL)
            _close(transport)


#: Cancelled commands being ended (referenced until they are: a task may be collected).
_ending: set[asyncio.Task] = set()


def in_background(coroutine: Coroutine) -> None:
    """Run ``coroutine`` as a task kept referenced until it ends (ending a command)."""
    task = asyncio.ensure_future(coroutine)
    _ending.add(task)
    task.add_done_callback(_ending.discard)


def _close(transport: asyncio.SubprocessTransport) -> None:
    try:
        # Closes the pipes even if a grandchild still holds them open.
        transport.close()
    except PermissionError:  # a process the gateway may not signal; logged by _stop
        pass


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone, or nothing left in it is the service account's to signal


class _Capture(asyncio.SubprocessProtocol):
    """Keeps at most ``limit`` bytes of stdout and stderr; stops reading a stream past that."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop):
        self.limit = limit
        self.output = {1: bytearray(), 2: bytearray()}
        self.truncated = False
        self.exited = loop.create_future()  # the process exited
        self.finished = loop.create_future()  # ... and its output pipes are closed
        self.overflowed = loop.create_future()  # a stream passed the limit
        self.transport: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        kept = self.output[fd]
        room = self.limit - len(kept)
        if len(data) <= room:
            kept += data
            return
        kept += data[:room]
        self.truncated = True
        # Nothing more is read from this stream: the command blocks writing until it is stopped.
        self.transport.get_pipe_transport(fd).pause_reading()
        _resolve(self.overflowed)

    def process_exited(self) -> None:
        _resolve(self.exited)

    def connection_lost(self, exc: Exception | None) -> None:
        _resolve(self.finished)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
