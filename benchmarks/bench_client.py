"""Client side of the benchmark: runs as the benchmark user, with the stock clients.

``run.py`` copies this file into its work directory and runs it as the benchmark user
(``runuser -u carol -- bench-venv/bin/python bench_client.py TASK JSON_ARGS``). Each task
prints lines starting with ``@@`` followed by JSON: ``checkpoint`` (wait for the
orchestrator to answer ``go`` on stdin), ``result`` (the measurements) or ``error``.
Every wait is bounded; every cluster and job a task creates is shut down or cancelled
before it returns, also when it fails.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from urllib.parse import urlparse

USER = os.environ["USER"]
SQUEUE = "/usr/bin/squeue"
SBATCH = "/usr/bin/sbatch"
SCANCEL = "/usr/bin/scancel"


# -- protocol with run.py ------------------------------------------------------------------


def emit(kind: str, **data) -> None:
    print("@@" + json.dumps({"kind": kind, **data}), flush=True)


def checkpoint(name: str, **data) -> None:
    """Tell the orchestrator we reached ``name``; continue when it answers ``go``."""
    emit("checkpoint", name=name, **data)
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise RuntimeError(f"orchestrator answered {line!r} at checkpoint {name}")


# -- SLURM as the benchmark user -------------------------------------------------------------


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


def wait_queued(t0: float, predicate, timeout: float, interval: float = 0.05):
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


def scancel_all() -> None:
    subprocess.run([SCANCEL, f"--user={USER}"], capture_output=True, timeout=60)


# -- dask-gateway clusters (ours and the stock backend) ---------------------------------------


def connect(address: str):
    """A stock ``Gateway`` client for the gateway whose proxy serves ``address``."""
    from dask_gateway import Gateway

    # The proxy port explicitly: the site's /etc/dask config must not redirect TLS traffic.
    return Gateway(address=address, proxy_address=urlparse(address).port, auth="basic")


class Clusters:
    """A Gateway client and the clusters it made; everything is closed on exit."""

    def __init__(self, address: str):
        self.gateway = connect(address)
        self.clusters = []
        self.others = []  # clients, extra gateways: closed first

    def new(self, options: dict):
        cluster = self.gateway.new_cluster(**options)
        self.clusters.append(cluster)
        return cluster

    def shutdown(self, cluster) -> None:
        cluster.shutdown()
        self.clusters.remove(cluster)
        cluster.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for other in self.others:
            try:
                other.close()
            except Exception:
                pass
        for cluster in list(self.clusters):
            try:
                cluster.shutdown()
                cluster.close()
            except Exception:
                traceback.print_exc()
        # Names of clusters made by this user that the gateway still runs (e.g. a
        # new_cluster that failed half-way): stop them too.
        try:
            for report in self.gateway.list_clusters():
                self.gateway.stop_cluster(report.name)
        except Exception:
            traceback.print_exc()
        self.gateway.close()


def gw_new_cluster(address: str, options: dict, repeats: int) -> dict:
    """Scenario 1: new_cluster() until RUNNING, ``repeats`` times (each shut down after)."""
    times = []
    with Clusters(address) as gw:
        for _ in range(repeats):
            if not wait_empty():
                raise RuntimeError("jobs of the previous cluster did not leave the queue")
            t0 = time.perf_counter()
            cluster = gw.new(options)
            times.append(time.perf_counter() - t0)
            gw.shutdown(cluster)
        wait_empty()
    return {"times": times, "median": statistics.median(times)}


def gw_scale_wait(address: str, options: dict, n: int) -> dict:
    """Scenario 3: scale(n) then client.wait_for_workers(n) on a running cluster."""
    with Clusters(address) as gw:
        cluster = gw.new(options)
        client = cluster.get_client()
        gw.others.append(client)
        base = queued() or 0
        t0 = time.perf_counter()
        cluster.scale(n)
        client.wait_for_workers(n, timeout=240)
        elapsed = time.perf_counter() - t0
        in_queue = queued()
        client.close()
        gw.others.remove(client)
        gw.shutdown(cluster)
        wait_empty()
    return {"seconds": elapsed, "queued_before": base, "queued_after": in_queue}


def gw_scale_shutdown(address: str, options: dict, n: int) -> dict:
    """Scenarios 2 and 4: scale(n) until n worker jobs are in squeue, then shutdown()
    until the user's queue is empty."""
    with Clusters(address) as gw:
        cluster = gw.new(options)
        base = queued() or 0
        t0 = time.perf_counter()
        cluster.scale(n)
        call = time.perf_counter() - t0
        scaled, seen = wait_queued(t0, lambda q: q >= base + n, 180)
        if scaled is None:
            raise RuntimeError(f"only {seen - base} of {n} workers reached squeue in 180 s")
        t1 = time.perf_counter()
        gw.shutdown(cluster)
        shutdown_call = time.perf_counter() - t1
        workers_gone, _ = wait_queued(t1, lambda q: q <= base, 180)
        stopped, left = wait_queued(t1, lambda q: q == 0, 180)
    return {
        "scale_call": call,
        "scale": scaled,
        "shutdown_call": shutdown_call,
        "workers_gone": workers_gone,
        "shutdown": stopped,
        "left_in_queue": left,
        "scheduler_jobs": base,
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _latency_summary(values: list[float]) -> dict:
    if not values:
        return {"requests": 0}
    return {
        "requests": len(values),
        "p50_ms": 1000 * _percentile(values, 50),
        "p99_ms": 1000 * _percentile(values, 99),
        "max_ms": 1000 * max(values),
    }


def gw_scale_latency(
    address: str, options: dict, n: int, idle_requests: int, max_requests: int, tail: float
) -> dict:
    """Scenarios 2 (scale(500)) and 6: list_clusters latency, idle and while scaling.

    A second Gateway client calls list_clusters back to back from just before scale(n)
    until ``tail`` seconds after all n jobs are in squeue (at most ``max_requests`` calls
    and 120 s). Then the cluster is shut down (timed too).
    """
    with Clusters(address) as gw:
        cluster = gw.new(options)
        pinger = connect(address)
        gw.others.append(pinger)

        def timed_list() -> float:
            t = time.perf_counter()
            pinger.list_clusters()
            return time.perf_counter() - t

        idle = [timed_list() for _ in range(idle_requests)]

        during: list[tuple[float, float]] = []  # (start, seconds) of each request
        stop = threading.Event()

        def ping():
            deadline = time.perf_counter() + 120
            while not stop.is_set() and len(during) < max_requests:
                start = time.perf_counter()
                during.append((start, timed_list()))
                if start > deadline:
                    break

        base = queued() or 0
        thread = threading.Thread(target=ping, daemon=True)
        t0 = time.perf_counter()
        thread.start()
        cluster.scale(n)
        call = time.perf_counter() - t0
        scaled, seen = wait_queued(t0, lambda q: q >= base + n, 120)
        time.sleep(tail)
        stop.set()
        thread.join(30)
        t1 = time.perf_counter()
        gw.shutdown(cluster)
        workers_gone, _ = wait_queued(t1, lambda q: q <= base, 180)
        stopped, left = wait_queued(t1, lambda q: q == 0, 180)
    slowest_start, slowest = max(during, key=lambda r: r[1]) if during else (t0, 0.0)
    return {
        "scale_call": call,
        "scale": scaled,
        "reached": (seen or 0) - base,
        "workers_gone": workers_gone,
        "shutdown": stopped,
        "left_in_queue": left,
        "idle": _latency_summary(idle),
        "during": {
            **_latency_summary([seconds for _, seconds in during]),
            "window_s": (during[-1][0] - t0) if during else 0.0,
            "slowest_started_at_s": slowest_start - t0,
        },
    }


def gw_idle_clusters(address: str, options: dict, steps: list[int], workers: int) -> dict:
    """Scenario 5: hold ``steps[i]`` clusters of ``workers`` queued workers each, and let
    the orchestrator count slurmctld RPCs at each step (checkpoint ``idle``)."""
    made = []
    with Clusters(address) as gw:
        for count in steps:
            while len(gw.clusters) < count:
                cluster = gw.new(options)
                cluster.scale(workers)
            expected = count * (1 + workers)
            reached, seen = wait_queued(
                time.perf_counter(), lambda q, expected=expected: q >= expected, 180
            )
            if reached is None:
                raise RuntimeError(f"{seen} jobs in squeue, expected {expected}")
            made.append({"clusters": count, "queued": seen})
            checkpoint("idle", clusters=count, workers=workers, queued=seen)
        for cluster in list(gw.clusters):
            gw.shutdown(cluster)
        wait_empty(120)
    return {"steps": made}


# -- dask-jobqueue ---------------------------------------------------------------------------


def _jobqueue_cluster(args: dict, port: int, hold: bool):
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(
        cores=1,
        memory="512MB",
        processes=1,
        python=args["python"],
        queue="workers",
        walltime="00:30:00",
        log_directory=args["log_directory"],
        scheduler_options={"host": "127.0.0.1", "port": port, "dashboard_address": "127.0.0.1:0"},
        worker_extra_args=["--host", "127.0.0.1"],
        job_extra_directives=["--hold"] if hold else [],
    )


def jq_new_cluster(args: dict, repeats: int) -> dict:
    """Scenario 1 for jobqueue: SLURMCluster(...) until its (local) scheduler is up."""
    import dask_jobqueue  # noqa: F401 - imported before timing, as the gateway clients are

    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        cluster = _jobqueue_cluster(args, args["port"] + i, hold=False)
        times.append(time.perf_counter() - t0)
        cluster.close()
    return {"times": times, "median": statistics.median(times)}


def jq_scale_wait(args: dict, n: int) -> dict:
    from distributed import Client

    cluster = _jobqueue_cluster(args, args["port"], hold=False)
    client = None
    try:
        client = Client(cluster)
        t0 = time.perf_counter()
        cluster.scale(n)
        client.wait_for_workers(n, timeout=240)
        elapsed = time.perf_counter() - t0
    finally:
        if client is not None:
            client.close()
        cluster.close()
        if not wait_empty():
            scancel_all()
    return {"seconds": elapsed}


def jq_scale_shutdown(args: dict, n: int) -> dict:
    cluster = _jobqueue_cluster(args, args["port"], hold=True)
    closed = False
    try:
        t0 = time.perf_counter()
        cluster.scale(n)
        call = time.perf_counter() - t0
        scaled, seen = wait_queued(t0, lambda q: q >= n, 180)
        if scaled is None:
            raise RuntimeError(f"only {seen} of {n} workers reached squeue in 180 s")
        t1 = time.perf_counter()
        cluster.close()
        closed = True
        shutdown_call = time.perf_counter() - t1
        stopped, left = wait_queued(t1, lambda q: q == 0, 180)
    finally:
        if not closed:
            cluster.close()
        if not wait_empty(30):
            scancel_all()
    return {
        "scale_call": call,
        "scale": scaled,
        "shutdown_call": shutdown_call,
        "shutdown": stopped,
        "left_in_queue": left,
    }


# -- floor: plain sbatch -----------------------------------------------------------------------


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
        if not wait_empty(30):
            scancel_all()
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


def floor_pair(python: str, port: int, workers: int, log_directory: str) -> dict:
    """A bare scheduler job and a worker job (plain TCP, no gateway): time until the
    scheduler listens and until the worker is connected; then ``workers`` more worker
    tasks as one array until all are connected."""
    from distributed import Client

    scheduler = f"""#!/bin/bash
#SBATCH --job-name=bench-floor-scheduler
#SBATCH --partition=schedulers
#SBATCH --cpus-per-task=1
#SBATCH --mem=1G
#SBATCH --time=10
#SBATCH --output={log_directory}/floor-scheduler-%j.log
exec {python} -m distributed.cli.dask_scheduler --host 127.0.0.1 --port {port} \\
    --dashboard-address 127.0.0.1:0
"""
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
        sbatch(scheduler)
        sbatch(worker)
        deadline = t0 + 90
        while not _port_open(port):
            if time.perf_counter() > deadline:
                raise RuntimeError("the bare scheduler did not listen within 90 s")
            time.sleep(0.02)
        scheduler_up = time.perf_counter() - t0
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


TASKS = {
    "gw_new_cluster": gw_new_cluster,
    "gw_scale_wait": gw_scale_wait,
    "gw_scale_shutdown": gw_scale_shutdown,
    "gw_scale_latency": gw_scale_latency,
    "gw_idle_clusters": gw_idle_clusters,
    "jq_new_cluster": jq_new_cluster,
    "jq_scale_wait": jq_scale_wait,
    "jq_scale_shutdown": jq_scale_shutdown,
    "floor_array": floor_array,
    "floor_pair": floor_pair,
}


def main() -> None:
    task, args = sys.argv[1], json.loads(sys.argv[2])
    try:
        result = TASKS[task](**args)
    except BaseException as exc:
        traceback.print_exc()
        emit("error", error=f"{type(exc).__name__}: {exc}")
        sys.exit(1)
    emit("result", **result)


if __name__ == "__main__":
    main()
