"""Setup of the host for the benchmark: the benchmark user carol, the bench venv (the stock
dask-gateway-server and dask-jobqueue) and the stock backend's sudoers rule."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import tempfile
import textwrap
from pathlib import Path

from benchmarks.host import (
    BENCH_PYTHON,
    BENCH_VENV,
    LAUNCHER,
    REPO,
    STOCK_SERVER,
    USER,
    USER_GROUP,
    BenchError,
    log,
)
from harness.gateway import SERVICE_ACCOUNT
from harness.processes import run

SUDOERS = Path("/etc/sudoers.d/slurm-gateway-bench")
BENCH_REQUIREMENTS = [
    "dask-gateway==2026.3.0",
    "dask-jobqueue",
    "distributed==2026.8.0",
    "dask==2026.8.0",
]


def ensure_user() -> None:
    """The benchmark user exists and is in the gateway's group (the gateway's sudo rule)."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        log(f"creating user {USER} (group {USER_GROUP})")
        out = run(["useradd", "-m", "-G", USER_GROUP, USER])
        if out.returncode != 0:
            raise BenchError(f"useradd {USER}: {out.stderr.strip()}") from None
    if USER not in grp.getgrnam(USER_GROUP).gr_mem:
        # e.g. the group was made anew by dev-cluster.sh after a purge
        log(f"adding user {USER} to group {USER_GROUP}")
        out = run(["usermod", "-a", "-G", USER_GROUP, USER])
        if out.returncode != 0:
            raise BenchError(f"usermod {USER}: {out.stderr.strip()}") from None


def ensure_bench_venv() -> None:
    """The bench venv: our package, the stock server and clients, dask-jobqueue."""
    if BENCH_PYTHON.exists() and STOCK_SERVER.exists() and LAUNCHER.exists():
        return
    log(f"creating {BENCH_VENV} (our package, stock dask-gateway-server, dask-jobqueue)")
    steps = [
        ["/usr/bin/python3", "-m", "venv", str(BENCH_VENV)],
        [str(BENCH_VENV / "bin" / "pip"), "install", "-q", str(REPO), *BENCH_REQUIREMENTS],
        ["chmod", "-R", "a+rX", str(BENCH_VENV)],
    ]
    for step in steps:
        out = run(step, timeout=1200)
        if out.returncode != 0:
            raise BenchError(f"{' '.join(step)}: {out.stderr[-2000:]}")


def install_sudoers() -> None:
    """The stock backend's documented rule: slurmgw may run the launcher as the user."""
    text = textwrap.dedent(f"""\
        # Installed by slurm-gateway benchmarks/run.py (removed at its end): the stock
        # dask-gateway SLURM backend runs its launcher as the benchmark user.
        Defaults:{SERVICE_ACCOUNT} !requiretty
        {SERVICE_ACCOUNT} ALL = ({USER}) NOPASSWD: {LAUNCHER}
        """)
    fd, tmp = tempfile.mkstemp(prefix="sudoers-bench-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o440)
    check = run(["visudo", "-cf", tmp])
    if check.returncode != 0:
        os.unlink(tmp)
        raise BenchError(f"sudoers rule refused by visudo: {check.stdout}{check.stderr}")
    shutil.move(tmp, SUDOERS)
    os.chown(SUDOERS, 0, 0)


def remove_sudoers() -> None:
    try:
        SUDOERS.unlink()
    except FileNotFoundError:
        pass
