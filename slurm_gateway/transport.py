"""How commands reach SLURM, as the gateway's service account or as a user.

This is the one seam between the backend and the machine: the backend only ever
calls :meth:`CommandRunner.run`. :class:`LocalSudoRunner` runs commands on this
host, switching to the user with ``sudo -n -u USER``; an SSH runner for gateways
that live off the login node implements the same method.
"""

from __future__ import annotations

import asyncio
import os
import pwd
from dataclasses import dataclass

from traitlets import Float, List, Unicode
from traitlets.config import LoggingConfigurable


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]  # the command as asked for, without the sudo prefix
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def summary(self) -> str:
        """``sbatch exited 1: sbatch: error: ...`` for messages and logs."""
        detail = (self.stderr.strip() or self.stdout.strip()).replace("\n", " | ")
        return f"{os.path.basename(self.argv[0])} exited {self.returncode}: {detail[:2000]}"


class CommandRunner(LoggingConfigurable):
    """Runs a command, optionally as another user. Subclass to change the transport."""

    timeout = Float(
        60,
        help="Seconds before a SLURM command is killed and reported as failed (exit code -1).",
        config=True,
    )

    async def run(
        self, argv: list[str], *, user: str | None = None, stdin: bytes | None = None
    ) -> CommandResult:
        """Run ``argv`` (as ``user`` if given) and return its exit code and output.

        Never raises for a failing command: callers decide what a non-zero exit means.
        """
        raise NotImplementedError


class LocalSudoRunner(CommandRunner):
    """Run commands on this host; as another user through ``sudo -n -u USER``.

    The service account needs a sudo rule allowing exactly the commands the
    backend runs as users (``sbatch``, ``scancel``, ``mkdir``, ``tail``), for the
    users allowed to use the gateway, without a password. See the README.
    """

    sudo = Unicode("sudo", help="Path to sudo.", config=True)

    environment = List(
        ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"],
        help="""The whole environment of the commands run (NAME=value items).

        Nothing of the gateway's own environment (keys, tokens) leaks to SLURM commands.""",
        config=True,
    )

    async def run(self, argv, *, user=None, stdin=None):
        full_argv = argv
        if user is not None and user != _current_user():
            full_argv = [self.sudo, "-n", "-u", user, "--", *argv]
        env = dict(item.split("=", 1) for item in self.environment)
        try:
            proc = await asyncio.create_subprocess_exec(
                *full_argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd="/",
            )
        except OSError as exc:
            return CommandResult(argv, -1, "", f"could not run {full_argv[0]}: {exc}")
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return CommandResult(argv, -1, "", f"timed out after {self.timeout:g} s")
        return CommandResult(
            argv, proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        )


def _current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name
