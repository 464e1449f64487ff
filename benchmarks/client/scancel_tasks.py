"""Scenario 8: a running cluster's jobs scancelled from outside the gateway."""

from __future__ import annotations

import faulthandler
import gc
import statistics
import subprocess
import sys
import time

from gateway_tasks import Clusters
from user_queue import SCANCEL, SQUEUE, USER, wait_empty


def _job_ids() -> set[str]:
    """The benchmark user's job ids in squeue (array tasks one by one)."""
    out = subprocess.run(
        [SQUEUE, "--noheader", "--array", f"--user={USER}", "--format=%i"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return set(out.stdout.split()) if out.returncode == 0 else set()


def progress(message: str) -> None:
    """A line of progress in the client log (stderr)."""
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _scancel(job_id: str) -> None:
    subprocess.run([SCANCEL, job_id], capture_output=True, timeout=30, check=True)


def _censored_median(values: list[float | None], bound: float) -> float | str | None:
    """The median of ``values``, where None is a wait that ran out at ``bound`` seconds:
    a number, or ``"> bound"`` when the middle value is such a timeout."""
    if not values:
        return None
    ordered = sorted(values, key=lambda v: float("inf") if v is None else v)
    middle = ordered[(len(ordered) - 1) // 2 : len(ordered) // 2 + 1]
    if None in middle:
        return f"> {bound:.0f}"
    return statistics.median(middle)


def _wait_new_job(known: set[str], t0: float, bound: float) -> float | None:
    """Seconds from ``t0`` until a job id not in ``known`` is in squeue (None: not within
    ``bound`` seconds)."""
    while time.perf_counter() - t0 < bound:
        if _job_ids() - known:
            return time.perf_counter() - t0
        time.sleep(0.05)
    return None


def _wait_failed(gw: Clusters, name: str, t0: float, bound: float) -> tuple[float | None, str]:
    """Seconds from ``t0`` until ``get_cluster(name)`` says FAILED (None: not within
    ``bound`` seconds, or STOPPED), and the last status seen."""
    status = "?"
    while time.perf_counter() - t0 < bound:
        status = gw.gateway.get_cluster(name).status.name
        if status == "FAILED":
            return time.perf_counter() - t0, status
        if status == "STOPPED":
            break
        time.sleep(0.05)
    return None, status


def _scancel_round(gw: Clusters, options: dict, bound: float) -> dict:
    """One round of scenario 8 on a new cluster (see :func:`gw_scancel`)."""
    before = _job_ids()  # jobs of the previous round may still be ending: only new ids count
    cluster = gw.new(options)
    [scheduler] = _job_ids() - before
    progress(f"cluster {cluster.name}: scheduler job {scheduler}")
    client = cluster.get_client(set_as_default=False)
    cluster.scale(1)
    client.wait_for_workers(1, timeout=bound)
    [worker] = _job_ids() - before - {scheduler}
    client.close()
    progress(f"worker job {worker} connected; scancel")
    t0 = time.perf_counter()
    _scancel(worker)
    replaced = _wait_new_job(before | {scheduler, worker}, t0, bound)
    progress(f"replacement in squeue after {replaced} s; scancel of the scheduler")
    t0 = time.perf_counter()
    _scancel(scheduler)
    failed, status = _wait_failed(gw, cluster.name, t0, bound)
    progress(f"status {status} after {failed} s; connect()")
    try:
        gw.gateway.connect(cluster.name).close()
        error = f"connect() raised nothing (status {status})"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
    gw.clusters.remove(cluster)
    cluster.close(shutdown=True)
    return {"replaced": replaced, "failed": failed, "status": status, "error": error}


def gw_scancel(address: str, options: dict, repeats: int, bound: float) -> dict:
    """Scenario 8: a running cluster's worker job scancelled from outside: seconds until
    its replacement is in squeue; then its scheduler job: seconds until ``get_cluster``
    says FAILED (and what ``connect`` raises). ``repeats`` rounds, each wait at most
    ``bound`` seconds (a wait that runs out counts as ``> bound`` in the medians).

    The stock client's ``Gateway.__del__`` calls ``close()``, which waits on the client's
    event loop: when the cyclic garbage collector runs in that loop's thread (and the
    ``GatewayCluster`` of a failed ``connect()`` is such garbage) it waits for itself
    forever. Automatic collection is therefore off during this task; garbage is collected
    in this thread after each round. A round that still hangs is ended by a watchdog that
    prints every thread's stack to the client log.
    """
    rounds = []
    gc.disable()
    try:
        with Clusters(address) as gw:
            for number in range(repeats):
                if not wait_empty(bound):
                    raise RuntimeError("jobs of the previous cluster did not leave the queue")
                progress(f"round {number + 1} of {repeats}")
                faulthandler.dump_traceback_later(4 * bound + 60, exit=True)
                rounds.append(_scancel_round(gw, options, bound))
                faulthandler.cancel_dump_traceback_later()
                gc.collect()
            wait_empty(bound)
    finally:
        gc.enable()
    replaced = [r["replaced"] for r in rounds]
    failed = [r["failed"] for r in rounds]
    return {
        "rounds": rounds,
        "bound": bound,
        "replaced": replaced,
        "replaced_median": _censored_median(replaced, bound),
        "failed": failed,
        "failed_median": _censored_median(failed, bound),
        "errors": [r["error"] for r in rounds],
    }
