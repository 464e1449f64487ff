"""Tasks with dask-jobqueue's SLURMCluster, run by the user directly (no gateway)."""

from __future__ import annotations

import statistics
import time

from user_queue import leave_queue_empty, wait_queued


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
        leave_queue_empty()
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
        leave_queue_empty(30)
    return {
        "scale_call": call,
        "scale": scaled,
        "shutdown_call": shutdown_call,
        "shutdown": stopped,
        "left_in_queue": left,
    }
