"""SLURM as the benchmark user sees it: how many jobs the user has queued, waiting for that
number, sbatch and scancel."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

USER = os.environ["USER"]
SQUEUE = "/usr/bin/squeue"
SBATCH = "/usr/bin/sbatch"
SCANCEL = "/usr/bin/scancel"


def queued() -> int | None:
    """How many jobs (array tasks counted one by one) the user has in squeue, or None."""
    try:
        out = subprocess.run(
            [SQUEUE, "--noheader", "--array", f"--user={USER}", "--format=%i"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        return None
    return sum(1 for line in out.stdout.splitlines() if line.strip())


def wait_queued(
    t0: float, predicate: Callable[[int], bool], timeout: float, interval: float = 0.05
) -> tuple[float | None, int | None]:
    """Seconds from ``t0`` until ``predicate(number queued)`` holds, and that number.

    Returns ``(None, last number seen)`` if it does not hold within ``timeout`` seconds.
    """
    last = None
    while True:
        n = queued()
        if n is not None:
            last = n
            if predicate(n):
                return time.perf_counter() - t0, n
        if time.perf_counter() - t0 > timeout:
            return None, last
        time.sleep(interval)


def wait_empty(timeout: float = 90) -> bool:
    elapsed, _ = wait_queued(time.perf_counter(), lambda n: n == 0, timeout, interval=0.2)
    return elapsed is not None


def sbatch(script: str, *options: str) -> str:
    out = subprocess.run(
        [SBATCH, "--parsable", *options], input=script, capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise RuntimeError(f"sbatch {' '.join(options)} failed: {out.stderr.strip()}")
    return out.stdout.strip().split(";")[0]


def leave_queue_empty(timeout: float = 90) -> None:
    """Wait until the user's queue is empty; cancel what is left after ``timeout`` seconds."""
    if not wait_empty(timeout):
        scancel_all()


def scancel_all() -> None:
    subprocess.run([SCANCEL, f"--user={USER}"], capture_output=True, timeout=60)
