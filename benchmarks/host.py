"""What the benchmark uses on the dev cluster's host: paths, ports, the benchmark user, and
its progress log."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from harness.processes import HarnessError

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PREFIX = Path("/opt/slurm-gateway")
BENCH_VENV = PREFIX / "bench-venv"
BENCH_PYTHON = BENCH_VENV / "bin" / "python"
LAUNCHER = BENCH_VENV / "bin" / "dask-gateway-jobqueue-launcher"
STOCK_SERVER = BENCH_VENV / "bin" / "dask-gateway-server"
OURS_PYTHON = PREFIX / "venv" / "bin" / "python"
OURS_SERVER = PREFIX / "venv" / "bin" / "slurm-gateway"
JOB_PYTHON = PREFIX / "envs" / "default" / "bin" / "python"
USER = "carol"
USER_GROUP = "dask-users"

# Ports (127.0.0.1 only). Each gateway: proxy = port, API = port + 1.
PORTS = {"ours-live": 19000, "ours-held": 19010, "stock-live": 19100, "stock-held": 19110}
PORTS["ours-ssh-held"] = 19020  # scenario 7: ours through SSH (scripts/sshd.sh's sshd)
JOBQUEUE_PORT = 19500  # + i for the i-th local scheduler
FLOOR_PORT = 19600

STARTED = time.monotonic()


class BenchError(HarnessError):
    """The benchmark cannot go on (setup failed) or one measurement failed."""


def log(message: str) -> None:
    """Progress, on stderr, with the seconds since the benchmark started."""
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)
