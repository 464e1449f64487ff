"""Commands and processes: run a command, wait for a condition, start a process as another
Unix account (in a process group of its own, output to a log file) and stop it again."""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import signal
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

RUNUSER = "/usr/sbin/runuser"
PATH = "/usr/bin:/bin"

T = TypeVar("T")


class HarnessError(RuntimeError):
    """A command or process of the harness did not do what it must."""


def run(argv: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run a command to its end; its output is captured as text."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.5) -> T:
    """Call ``predicate`` until it returns something true or ``timeout`` seconds have passed;
    return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def command_as(user: str, argv: list[str]) -> list[str]:
    """The command line that runs ``argv`` as ``user`` (through runuser, from root)."""
    return [RUNUSER, "-u", user, "--", *argv]


def user_environment(user: str, **extra: str) -> dict[str, str]:
    """A clean environment for a process of ``user``: the system PATH, its home, its name."""
    return {
        "PATH": PATH,
        "HOME": pwd.getpwnam(user).pw_dir,
        "USER": user,
        "LOGNAME": user,
        "LANG": "C.UTF-8",
        **extra,
    }


def start_as(
    account: str,
    argv: list[str],
    log_path: Path,
    group: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start ``argv`` as ``account`` in a process group of its own, its output appended to
    ``log_path`` (mode 0640); in ``group`` if given (else the account's own), with ``env``
    added to its environment.

    Started directly as the account (not through runuser), without its supplementary groups,
    so that signals sent to the process reach the program itself."""
    entry = pwd.getpwnam(account)
    gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    with open(log_path, "ab") as log:
        os.chmod(log_path, 0o640)
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd="/",
            user=entry.pw_uid,
            group=gid,
            extra_groups=[],
            env=user_environment(account, **(env or {})),
            start_new_session=True,
        )


def all_pids() -> list[int]:
    """The ids of all processes."""
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _parents_and_start_times() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time) of every process."""
    table = {}
    for pid in all_pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[pid] = (int(fields[1]), int(fields[19]))
    return table


def descendants(pid: int) -> dict[int, int]:
    """The process ``pid`` and all its descendants (also those in other process groups, such
    as a gateway's proxy): pid -> start time."""
    table = _parents_and_start_times()
    found = {pid: table[pid][1]} if pid in table else {}
    grew = True
    while grew:
        grew = False
        for child, (parent, start) in table.items():
            if parent in found and child not in found:
                found[child] = start
                grew = True
    return found


def kill_exact(processes: dict[int, int]) -> None:
    """SIGKILL those of ``processes`` (pid -> start time, from :func:`descendants`) that still
    run, recognised by their start time (a pid may have been reused)."""
    table = _parents_and_start_times()
    for pid, start in processes.items():
        if pid in table and table[pid][1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Stop a process started by :func:`start_as` with ``sig`` (SIGKILL after ``timeout``
    seconds), then kill whatever of its process group is left."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def log_tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` lines of a log file ("" if it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def cmdline(pid: int) -> str:
    """The command line of process ``pid`` ("" if it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def pids_of(uid: int, needle: str) -> list[int]:
    """The processes of the account ``uid`` whose command line contains ``needle``."""
    found = []
    for pid in all_pids():
        try:
            owner = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue
        if owner == uid and needle in cmdline(pid):
            found.append(pid)
    return found


LISTEN = "0A"  # the state column of a listening socket in /proc/net/tcp
# Addresses whose listener answers a connection to 127.0.0.1.
_LOOPBACK_REACHING = {
    ipaddress.ip_address(a) for a in ("127.0.0.1", "0.0.0.0", "::", "::ffff:127.0.0.1")
}


def _proc_net_address(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """``0100007F:4650`` (each 32-bit word in the host's byte order) -> (address, port)."""
    address, port = text.split(":")
    words = [int(address[i : i + 8], 16) for i in range(0, len(address), 8)]
    return ipaddress.ip_address(struct.pack(f"={len(words)}I", *words)), int(port, 16)


def listener_uids(port: int, tables: list[str]) -> set[int]:
    """The owners (uids) of the sockets listening on a port that connections to
    127.0.0.1:``port`` reach, from texts in the format of /proc/net/tcp and tcp6."""
    owners = set()
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 8 or fields[3] != LISTEN:
                continue
            address, local_port = _proc_net_address(fields[1])
            if local_port == port and address in _LOOPBACK_REACHING:
                owners.add(int(fields[7]))
    return owners


def listener_uid(port: int, tables: list[str] | None = None) -> int | None:
    """The uid owning the listener that a connection to 127.0.0.1:``port`` reaches (None: no
    listener); ``tables``: /proc/net/tcp and /proc/net/tcp6 (read if not given). Raises
    HarnessError if accounts of more than one uid listen there."""
    if tables is None:
        tables = []
        for name in ("tcp", "tcp6"):
            try:
                tables.append(Path(f"/proc/net/{name}").read_text())
            except OSError:
                pass
    owners = listener_uids(port, tables)
    if len(owners) > 1:
        raise HarnessError(f"127.0.0.1:{port} has listeners of several uids: {sorted(owners)}")
    return owners.pop() if owners else None
