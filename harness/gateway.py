"""A dask-gateway server process (ours or the stock one) run as the gateway's service account,
as an admin installs it: its config readable by that account only, its health checked over
the proxy's HTTP address."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

from harness.processes import (
    HarnessError,
    descendants,
    kill_exact,
    log_tail,
    start_as,
    stop,
    user_environment,
    wait_until,
)

SERVICE_ACCOUNT = "slurmgw"
# The proxy token's name among a unit's credentials (slurm_gateway.cli.PROXY_TOKEN_CREDENTIAL).
PROXY_TOKEN_CREDENTIAL = "proxy-token"
# SLURM's client commands, hidden from a gateway that must reach SLURM over SSH only.
SLURM_COMMANDS = tuple(
    f"/usr/bin/{c}" for c in ("sbatch", "squeue", "sacct", "scancel", "scontrol")
)


class GatewayProcess:
    """One gateway server (``server -f config.py``) with its work directory.

    ``proxy`` is the proxy's ``host:port``, where the server answers ``/api/health``.
    """

    def __init__(self, workdir: Path, server: str | Path, proxy: str, start_timeout: float = 30):
        self.workdir = workdir
        self.server = str(server)
        self.proxy = proxy
        self.start_timeout = start_timeout
        self.config = workdir / "config.py"
        self.log = workdir / "gateway.log"
        self.proc: subprocess.Popen | None = None
        # Files the server must not see (e.g. SLURM_COMMANDS): /dev/null is bind-mounted over
        # each, in a mount namespace of the server's own.
        self.hidden: tuple[str, ...] = ()
        # Added to the server's environment (e.g. CREDENTIALS_DIRECTORY, as systemd sets it).
        self.env: dict[str, str] = {}

    @property
    def address(self) -> str:
        return f"http://{self.proxy}"

    def prepare_workdir(self) -> None:
        """The work directory belongs to the service account (the state goes there)."""
        shutil.chown(self.workdir, SERVICE_ACCOUNT)
        os.chmod(self.workdir, 0o711)

    def install_config(self, text: str) -> None:
        """Write the config, readable by the service account only (root:slurmgw 0640)."""
        self.config.write_text(text)
        shutil.chown(self.config, "root", SERVICE_ACCOUNT)
        os.chmod(self.config, 0o640)

    def start(self) -> None:
        """Start the server as the service account; return once it is healthy."""
        argv = [self.server, "-f", str(self.config)]
        if self.hidden:
            self.proc = start_hiding(self.hidden, SERVICE_ACCOUNT, argv, self.log, self.env)
        else:
            self.proc = start_as(SERVICE_ACCOUNT, argv, self.log, env=self.env)
        wait_until(lambda: self.proc.poll() is not None or self.healthy(), self.start_timeout)
        if not self.healthy():
            raise HarnessError(f"gateway {self.workdir} did not start:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.address}/api/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """Stop the server (SIGKILL after ``timeout`` seconds) and what it left running: its
        process group and its descendants (its proxy has a process group of its own)."""
        if self.proc is None:
            return
        processes = descendants(self.proc.pid)  # before they are orphaned
        stop(self.proc, sig, timeout)
        kill_exact(processes)

    def pids(self) -> set[int]:
        """The server's processes (it and its descendants), while it runs."""
        if self.proc is None or self.proc.poll() is not None:
            return set()
        return set(descendants(self.proc.pid))

    def rss(self) -> int:
        """The server process's resident memory, in bytes."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log, lines)


def start_hiding(
    hidden: tuple[str, ...],
    account: str,
    argv: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
):
    """Like ``start_as``, but in a mount namespace of its own where each of ``hidden`` is
    /dev/null (running it fails): started as root, it drops to ``account`` (without
    supplementary groups) by exec, so the pid is the program's."""
    entry = pwd.getpwnam(account)
    script = (
        'while [ "$1" != -- ]; do mount --bind /dev/null "$1" || exit 1; shift; done; shift; '
        f'exec setpriv --reuid={entry.pw_uid} --regid={entry.pw_gid} --clear-groups -- "$@"'
    )
    command = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script]
    with open(log_path, "ab") as log:
        os.chmod(log_path, 0o640)
        return subprocess.Popen(
            [*command, "sh", *hidden, "--", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd="/",
            env=user_environment(account, **(env or {})),
            start_new_session=True,
        )


def proxy_token_credentials(workdir: Path, accounts: tuple[str, ...]) -> dict[str, str]:
    """As the shipped units' ``LoadCredential=proxy-token``: one new proxy token, a copy for
    each account in a directory of its own under ``workdir`` that only it reads; each
    account's directory, for its CREDENTIALS_DIRECTORY."""
    token = secrets.token_hex(32)
    directories = {}
    for account in accounts:
        directory = workdir / f"credentials-{account}"
        directory.mkdir(mode=0o500)
        (directory / PROXY_TOKEN_CREDENTIAL).write_text(token)
        os.chmod(directory / PROXY_TOKEN_CREDENTIAL, 0o400)
        for path in (directory, directory / PROXY_TOKEN_CREDENTIAL):
            shutil.chown(path, account)
        directories[account] = str(directory)
    return directories
