"""What the gateway does as a user besides submitting and cancelling jobs.

Everything here runs ``slurm-gateway-user-helper`` (see :mod:`slurm_gateway.user_helper`)
as the user through the :class:`~slurm_gateway.transport.CommandRunner`: creating the
user's log directories, checking a job environment (and reading its identity), reading the
end of a job's log. The helper prints one JSON object; this module turns it into a value
or a :class:`UserError` whose message is meant for the user. Nothing secret goes on a
command line (other users see command lines in ``ps``): the cluster name travels on
standard input.
"""

from __future__ import annotations

import json
import re

from .envcheck import env_problem
from .transport import CommandResult, CommandRunner

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def one_line(text: str) -> str:
    """``text`` without control characters: what a user's files or programs print may end
    up in an HTTP reason and the gateway's log, where a newline would forge a line."""
    return _CONTROL.sub(" ", text)


class UserError(Exception):
    """Something about the user's own files or environment; the message says what to fix
    (made one line: it may quote what the user's files or programs hold)."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


class AsUser:
    """Runs the user-side helper as a given user and reads its answer."""

    def __init__(self, runner: CommandRunner, helper: str, *, max_log_bytes: int = 65536):
        self._runner = runner
        self._helper = helper
        self._max_log_bytes = max_log_bytes

    async def _call(self, username: str, argv: list[str], stdin: bytes | None = None) -> dict:
        result: CommandResult = await self._runner.run(
            [self._helper, *argv], user=username, stdin=stdin
        )
        if result.ok:
            try:
                answer = json.loads(result.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                answer = None
            if isinstance(answer, dict):
                return answer
        raise UserError(f"the gateway could not {argv[0]} as {username}: {result.summary()}")

    async def prepare_log_directory(
        self, username: str, user_directory: str, subdirectory: str, cluster_name: str
    ) -> None:
        """Create (as the user) ``user_directory/subdirectory``, both private to the user,
        refusing a user directory that another user could redirect."""
        answer = await self._call(
            username,
            ["log-dir", user_directory, subdirectory],
            stdin=cluster_name.encode() + b"\n",
        )
        if answer.get("error"):
            raise UserError(f"log directory: {answer['error']}")

    async def check_environment(
        self, username: str, prefix: str, gateway_version: str, timeout: float
    ) -> None:
        """Raise :class:`UserError` saying what to fix if ``prefix`` is no usable job env."""
        report = await self._call(username, ["env-check", prefix, "--timeout", f"{timeout:g}"])
        problem = env_problem(prefix, report, gateway_version)
        if problem:
            raise UserError(problem)

    async def environment_identity(self, username: str, prefix: str) -> object:
        """The identity of the job environment ``prefix`` as the user sees it (the helper's
        JSON, to be checked by :func:`slurm_gateway.envcache.identity_from_json`), or None
        if the helper could not tell."""
        try:
            return (await self._call(username, ["env-id", prefix])).get("identity")
        except UserError:
            return None

    async def last_log_line(self, username: str, path: str) -> str:
        """The last non-empty line of a job log (read with a byte limit), or ``""``."""
        try:
            answer = await self._call(
                username, ["log-tail", path, "--bytes", str(self._max_log_bytes)]
            )
        except UserError:
            return ""
        lines = answer.get("lines") or []
        return str(lines[-1])[:500].rstrip(".") if lines else ""
