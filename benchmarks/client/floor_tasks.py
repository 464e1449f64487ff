"""The floor: plain sbatch and scancel, and hand-written scheduler and worker jobs."""

from __future__ import annotations

import socket
import statistics
import subprocess
import time

from user_queue import SCANCEL, leave_queue_empty, sbatch, scancel_all, wait_empty, wait_queued


def floor_array(n: int, log_directory: str) -> dict:
    """sbatch --array of a trivial (held) n-task array until squeue lists it; then scancel
    until the queue is empty. Also n separate sbatch calls, one after the other."""
    script = "#!/bin/sh\ntrue\n"
    common = [
        "--hold",
        "--partition=workers",
        "--mem=256M",
        "--time=5",
        "--job-name=bench-floor",
        f"--output={log_directory}/floor-%j.log",
    ]
    try:
        t0 = time.perf_counter()
        job = sbatch(script, f"--array=0-{n - 1}", *common)
        submitted, _ = wait_queued(t0, lambda q: q >= n, 60)
        t1 = time.perf_counter()
        subprocess.run([SCANCEL, job], capture_output=True, timeout=60)
        cancelled, _ = wait_queued(t1, lambda q: q == 0, 60)

        t2 = time.perf_counter()
        jobs = [sbatch(script, *common) for _ in range(n)]
        separate, _ = wait_queued(t2, lambda q: q >= n, 120)
        t3 = time.perf_counter()
        subprocess.run([SCANCEL, *jobs], capture_output=True, timeout=60)
        separate_cancelled, _ = wait_queued(t3, lambda q: q == 0, 60)
    finally:
        leave_queue_empty(30)
    return {
        "array": submitted,
        "array_cancel": cancelled,
        "separate": separate,
        "separate_cancel": separate_cancelled,
    }


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _bare_scheduler(python: str, port: int, log_directory: str) -> str:
    return f"""#!/bin/bash
#SBATCH --job-name=bench-floor-scheduler
#SBATCH --partition=schedulers
#SBATCH --cpus-per-task=1
#SBATCH --mem=1G
#SBATCH --time=10
#SBATCH --output={log_directory}/floor-scheduler-%j.log
exec {python} -m distributed.cli.dask_scheduler --host 127.0.0.1 --port {port} \\
    --dashboard-address 127.0.0.1:0
"""


def _wait_listening(port: int, t0: float, timeout: float) -> float:
    """Seconds from ``t0`` until something listens on ``port``."""
    while not _port_open(port):
        if time.perf_counter() > t0 + timeout:
            raise RuntimeError(f"the bare scheduler did not listen within {timeout:g} s")
        time.sleep(0.02)
    return time.perf_counter() - t0


def floor_scheduler(python: str, port: int, repeats: int, log_directory: str) -> dict:
    """The floor of scenario 1: a bare scheduler job (plain TCP, no gateway) from sbatch
    until it listens, ``repeats`` times on an empty queue (each cancelled after)."""
    times = []
    try:
        for _ in range(repeats):
            if not wait_empty():
                raise RuntimeError("the previous bare scheduler did not leave the queue")
            t0 = time.perf_counter()
            sbatch(_bare_scheduler(python, port, log_directory))
            times.append(_wait_listening(port, t0, 90))
            scancel_all()
    finally:
        leave_queue_empty(60)
    return {"times": times, "median": statistics.median(times)}


def floor_pair(python: str, port: int, workers: int, log_directory: str) -> dict:
    """A bare scheduler job and a worker job (plain TCP, no gateway): time until the
    scheduler listens and until the worker is connected; then ``workers`` more worker
    tasks as one array until all are connected."""
    from distributed import Client

    worker = f"""#!/bin/bash
#SBATCH --job-name=bench-floor-worker
#SBATCH --partition=workers
#SBATCH --cpus-per-task=1
#SBATCH --mem=512M
#SBATCH --time=10
#SBATCH --output={log_directory}/floor-worker-%A_%a.log
exec {python} -m distributed.cli.dask_worker tcp://127.0.0.1:{port} --host 127.0.0.1 \\
    --dashboard-address 127.0.0.1:0 --nthreads 1 --memory-limit 512MB --death-timeout 60
"""
    client = None
    try:
        t0 = time.perf_counter()
        sbatch(_bare_scheduler(python, port, log_directory))
        sbatch(worker)
        scheduler_up = _wait_listening(port, t0, 90)
        client = Client(f"tcp://127.0.0.1:{port}", timeout=30)
        client.wait_for_workers(1, timeout=90)
        pair = time.perf_counter() - t0

        t1 = time.perf_counter()
        sbatch(worker, f"--array=0-{workers - 1}")
        client.wait_for_workers(1 + workers, timeout=180)
        many = time.perf_counter() - t1
        client.close()
        client = None
        # Like a gateway cluster being shut down in scenario 4: a running scheduler and
        # 100 queued (held) workers; here also the 17 running workers.
        sbatch(worker, "--array=0-99", "--hold")
        wait_queued(time.perf_counter(), lambda q: q >= 118, 60)
        t2 = time.perf_counter()
        scancel_all()
        teardown, _ = wait_queued(t2, lambda q: q == 0, 60)
    finally:
        if client is not None:
            client.close()
        scancel_all()
        wait_empty(60)
    return {"scheduler_up": scheduler_up, "pair": pair, "workers": many, "teardown": teardown}
