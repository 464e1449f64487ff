"""SLURM commands over SSH: a gateway off the login node (a service VM, a container).

:class:`SSHSudoRunner` keeps ONE SSH connection, as the gateway's service account, to a
login node, and runs each command on its own channel of that connection (at most
``max_channels`` at once, below the login node's sshd ``MaxSessions``). Commands run there
as they would here: ``sudo -n -u USER -- argv...`` for users (the same sudo rule on the
login node), plain ``argv`` for the service account (squeue, sacct, scontrol).

sshd hands each command to the service account's login shell as one string, so every
argument is quoted (:func:`remote_command`): a job name, a path or a user's option reaches
the program as one literal argument whatever quotes, ``;``, ``$()`` or newlines it holds.

The login node's host key is checked against a known_hosts file (required; an unknown
key is never accepted). A dropped connection is made again in the background, waiting
:func:`reconnect_delay` between attempts. While there is no connection, commands fail the
way they fail when slurmctld does not answer (:data:`UNREACHABLE`), so that the backend's
outage handling applies: job states are kept, submissions and cancellations are retried,
and no cluster fails for it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import pwd
import shlex
import weakref

import asyncssh
from traitlets import Float, Integer, List, Unicode, default

from . import transport
from .transport import KILL_WAIT, TERM_GRACE, CommandResult, CommandRunner, stop_reason

#: stderr of a command that could not run because the login node is unreachable over SSH.
#: Starts with what SLURM's commands print when slurmctld does not answer
#: (:func:`slurm_gateway.slurm.slurm_unreachable`), so callers treat both alike.
UNREACHABLE = "Unable to contact slurm controller: no SSH connection to the login node {where}"

# asyncssh logs every channel at INFO; the gateway logs what matters itself.
logging.getLogger("asyncssh").setLevel(logging.WARNING)


def remote_command(
    argv: list[str],
    user: str | None,
    *,
    sudo: str = "sudo",
    environment: list[str] = (),
    deadline: float = 0,
    kill_after: float = TERM_GRACE,
) -> str:
    """The command line the login node's shell runs for ``argv`` (as ``user`` if given).

    Every argument is quoted for the shell. The command runs from ``/`` with exactly
    ``environment`` (NAME=value items) and, when ``deadline`` is set, under coreutils'
    ``timeout``: even if the gateway is gone, the login node stops it ``deadline`` seconds
    after it started (SIGTERM, then SIGKILL ``kill_after`` seconds later).
    """
    for item in environment:
        name, sep, _ = item.partition("=")
        if not sep or not name or name.startswith("-"):
            raise ValueError(f"not a NAME=value environment item: {item!r}")
    full = list(argv) if user is None else [sudo, "-n", "-u", user, "--", *argv]
    if deadline > 0:
        full = ["timeout", f"--kill-after={kill_after:g}", f"{math.ceil(deadline)}", *full]
    return "cd / && exec " + shlex.join(["env", "-i", *environment, *full])


def reconnect_delay(attempt: int, first: float, longest: float) -> float:
    """Seconds before connection attempt ``attempt + 1`` after ``attempt`` failures in a row:
    ``first``, doubled after each failure, at most ``longest``."""
    if attempt < 1:
        return 0.0
    return min(longest, first * 2 ** min(attempt - 1, 60))


class _ChannelCapture(asyncssh.SSHClientSession):
    """Keeps at most ``limit`` bytes of stdout and stderr of one channel."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop):
        self.limit = limit
        self.output = {1: bytearray(), 2: bytearray()}
        self.truncated = False
        self.closed = loop.create_future()  # the channel is closed (command ended or stopped)
        self.overflowed = loop.create_future()  # a stream passed the limit
        self.lost: Exception | None = None  # the connection broke under the channel
        self.channel: asyncssh.SSHClientChannel | None = None

    def connection_made(self, chan: asyncssh.SSHClientChannel) -> None:
        self.channel = chan

    def data_received(self, data: bytes, datatype: int | None) -> None:
        kept = self.output[2 if datatype == asyncssh.EXTENDED_DATA_STDERR else 1]
        room = self.limit - len(kept)
        if len(data) <= room:
            kept += data
            return
        kept += data[:room]
        self.truncated = True
        # Nothing more is read: the command blocks writing until it is stopped.
        self.channel.pause_reading()
        _resolve(self.overflowed)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc
        _resolve(self.closed)


class _Link:
    """The one SSH connection of a runner on one event loop, made again when it drops."""

    def __init__(self, runner: SSHSudoRunner):
        self.runner = runner
        self.conn: asyncssh.SSHClientConnection | None = None
        self.up = asyncio.Event()
        self.channels = asyncio.Semaphore(runner.max_channels)
        self.last_error = "not connected yet"
        self.task = asyncio.get_running_loop().create_task(self._keep())

    async def get(self, wait: float) -> asyncssh.SSHClientConnection | None:
        """The connection, waiting at most ``wait`` seconds for it to be made."""
        if self.conn is None:
            try:
                await asyncio.wait_for(self.up.wait(), wait)
            except TimeoutError:
                return None
        return self.conn

    async def _keep(self) -> None:
        runner, failures = self.runner, 0
        while True:
            try:
                conn = await asyncio.wait_for(runner.connect(), runner.connect_timeout)
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                self.last_error = _describe(exc)
                failures += 1
                delay = reconnect_delay(failures, runner.reconnect_delay, runner.reconnect_max)
                log = runner.log.warning if failures == 1 else runner.log.debug
                log("SSH to %s failed (%s); retrying in %g s", runner.where, self.last_error, delay)
                await asyncio.sleep(delay)
                continue
            runner.log.info("SSH connection to %s made", runner.where)
            failures = 0
            self.conn = conn
            self.up.set()
            await conn.wait_closed()
            self.up.clear()
            self.conn = None
            self.last_error = "the connection was lost"
            runner.log.warning("SSH connection to %s lost; reconnecting", runner.where)


class SSHSudoRunner(CommandRunner):
    """Run commands on a login node over SSH; as users through ``sudo -n -u USER`` there.

    For a gateway on a host without SLURM's commands. The service account logs in to the
    login node with its key (it needs a login shell there) and has the same sudo rule
    there as a gateway on the login node (``deploy/sudoers``).
    """

    host = Unicode(
        "",
        help="The login node to run SLURM commands on (host name or address). Required.",
        config=True,
    )
    port = Integer(22, help="The login node's SSH port.", config=True)
    username = Unicode(
        help="""The account logged in as on the login node: the gateway's service account.

        Default: the name of the account the gateway runs as.""",
        config=True,
    )

    @default("username")
    def _default_username(self):
        return pwd.getpwuid(os.getuid()).pw_name

    known_hosts = Unicode(
        "",
        help="""A known_hosts file holding the login node's host key. Required: the
        connection is refused unless the login node shows a key listed there.

        Make it with ``ssh-keyscan -p PORT HOST > FILE`` on a trusted network, and check
        the key against the login node's own (``ssh-keygen -lf /etc/ssh/ssh_host_*.pub``).""",
        config=True,
    )
    client_keys = List(
        Unicode(),
        help="""Private key files of the service account for logging in to the login node.

        Default: the account's own keys (``~/.ssh/id_ed25519`` and the like). Keep them
        readable by the service account only.""",
        config=True,
    )
    max_channels = Integer(
        8,
        min=1,
        help="""Commands running at once on the one SSH connection, each on a channel.

        Keep it below the login node sshd's MaxSessions (10 by default): sshd refuses
        channels past that. Further commands wait for a free channel.""",
        config=True,
    )
    connect_timeout = Float(
        15, help="Seconds one attempt to connect and log in may take.", config=True
    )
    connection_wait = Float(
        10,
        help="""Seconds a command waits for the connection while it is being made again.

        Past that, the command fails as when slurmctld does not answer: the backend keeps
        the jobs' last known states and retries submissions and cancellations.""",
        config=True,
    )
    keepalive_interval = Float(
        15,
        help="""Seconds between keepalive messages on an idle connection (0: none). A
        connection that misses keepalive_count_max answers in a row is dropped and made
        again, so a silent network failure is noticed.""",
        config=True,
    )
    keepalive_count_max = Integer(
        3,
        min=1,
        help="Keepalive messages without answer before the connection is dropped.",
        config=True,
    )
    reconnect_delay = Float(
        1, help="Seconds before the first new attempt after a failed connection.", config=True
    )
    reconnect_max = Float(
        10,
        help="Longest wait between connection attempts (the wait doubles after each failure).",
        config=True,
    )
    sudo = Unicode("sudo", help="Path to sudo on the login node.", config=True)
    environment = List(
        ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"],
        help="""The whole environment of the commands run on the login node (NAME=value).""",
        config=True,
    )

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not self.host:
            raise ValueError("SSHSudoRunner.host is not set: which login node to reach")
        if not self.known_hosts:
            raise ValueError(
                "SSHSudoRunner.known_hosts is not set: a known_hosts file with the login "
                "node's host key is required (unknown host keys are never accepted)"
            )
        remote_command(["true"], None, environment=self.environment)  # checks the items
        self._links: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Link]
        self._links = weakref.WeakKeyDictionary()

    @property
    def where(self) -> str:
        return f"{self.username}@{self.host}:{self.port}"

    async def connect(self) -> asyncssh.SSHClientConnection:
        """One new connection to the login node (host key checked, key login only)."""
        return await asyncssh.connect(
            self.host,
            self.port,
            username=self.username,
            known_hosts=self.known_hosts,
            client_keys=self.client_keys or (),
            agent_path=None,
            config=None,
            password=None,
            kbdint_auth=False,
            keepalive_interval=self.keepalive_interval,
            keepalive_count_max=self.keepalive_count_max,
            login_timeout=self.connect_timeout,
        )

    def _link(self) -> _Link:
        loop = asyncio.get_running_loop()
        link = self._links.get(loop)
        if link is None:
            link = self._links[loop] = _Link(self)
        return link

    async def close(self) -> None:
        """Close the connection of the running loop and stop making it again."""
        link = self._links.pop(asyncio.get_running_loop(), None)
        if link is not None:
            link.task.cancel()
            if link.conn is not None:
                link.conn.close()
                await link.conn.wait_closed()

    async def execute(
        self, argv: list[str], *, user: str | None, stdin: bytes | None
    ) -> CommandResult:
        """Run ``argv`` on the login node, through sudo whenever a user is given."""
        link = self._link()
        conn = await link.get(min(self.connection_wait, self.timeout))
        if conn is None:
            return self._unreachable(argv, link.last_error)
        command = remote_command(
            argv,
            user,
            sudo=self.sudo,
            environment=self.environment,
            deadline=self.timeout + TERM_GRACE,
        )
        loop = asyncio.get_running_loop()
        async with link.channels:
            try:
                chan, capture = await asyncio.wait_for(
                    conn.create_session(
                        lambda: _ChannelCapture(self.max_output, loop),
                        command,
                        encoding=None,
                        request_pty=False,
                    ),
                    self.connect_timeout,
                )
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                return self._unreachable(argv, f"no channel: {_describe(exc)}")
            return await self._finish(argv, chan, capture, stdin)

    async def _finish(self, argv, chan, capture: _ChannelCapture, stdin) -> CommandResult:
        try:
            if stdin is not None:
                chan.write(stdin)
            chan.write_eof()
            await asyncio.wait(
                [capture.closed, capture.overflowed],
                timeout=self.timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            stopped = stop_reason(
                capture.truncated, capture.closed.done(), self.max_output, self.timeout
            )
            if stopped:
                await self._stop(chan, capture)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and not capture.closed.done():
                transport.in_background(self._stop(chan, capture))  # as a timed-out one
            else:
                chan.close()
            raise
        if not capture.closed.done():  # the command did not stop
            chan.close()
        status = chan.get_exit_status()
        if not stopped and status is None:
            # The connection broke before the command's end was known: maybe it ran
            # (a job submitted twice is cancelled by the orphan sweep), maybe not.
            why = _describe(capture.lost) if capture.lost else "no exit status"
            return self._unreachable(argv, f"connection lost during the command: {why}")
        return CommandResult(
            argv,
            -1 if stopped else status,
            capture.output[1].decode("utf-8", "replace"),
            capture.output[2].decode("utf-8", "replace"),
            truncated=capture.truncated,
            stopped=stopped,
        )

    async def _stop(self, chan: asyncssh.SSHClientChannel, capture: _ChannelCapture) -> None:
        """SIGTERM the command's process group through the channel, SIGKILL it after a grace,
        then close the channel. (sshd signals the group as the service account; sudo relays
        SIGTERM to the user's command; the remote ``timeout`` is the backstop.)"""
        for signal_name, wait in (("TERM", TERM_GRACE), ("KILL", KILL_WAIT)):
            try:
                chan.send_signal(signal_name)
            except (OSError, asyncssh.Error):
                break
            if capture.truncated:
                break  # reading is paused: the channel cannot close by itself
            await asyncio.wait([capture.closed], timeout=wait)
            if capture.closed.done():
                return
        chan.close()

    def _unreachable(self, argv: list[str], why: str) -> CommandResult:
        message = UNREACHABLE.format(where=self.where) + f" ({why})"
        return CommandResult(argv, -1, "", message)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())[:300]


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


__all__ = ["SSHSudoRunner", "remote_command", "reconnect_delay", "UNREACHABLE"]
