"""Tasks against a dask-gateway (ours or the stock backend), with the stock client."""

from __future__ import annotations

import statistics
import threading
import time
import traceback
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from orchestrator import checkpoint
from user_queue import queued, wait_empty, wait_queued

if TYPE_CHECKING:
    from dask_gateway import Gateway, GatewayCluster


def connect(address: str) -> Gateway:
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

    def new(self, options: dict) -> GatewayCluster:
        cluster = self.gateway.new_cluster(**options)
        self.clusters.append(cluster)
        return cluster

    def shutdown(self, cluster: GatewayCluster) -> None:
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
    """Scenario 1: new_cluster() until RUNNING, ``repeats`` times (each shut down after);
    ``second_median``: of the runs after the first (the same environment again)."""
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
    second = statistics.median(times[1:]) if len(times) > 1 else None
    return {"times": times, "median": statistics.median(times), "second_median": second}


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


def _timed_shutdown(gw: Clusters, cluster: GatewayCluster, base: int) -> dict:
    """Shut ``cluster`` down: when the call returned, when the queue was back at the ``base``
    jobs there were before it scaled (its workers gone), and when it was empty."""
    t1 = time.perf_counter()
    gw.shutdown(cluster)
    shutdown_call = time.perf_counter() - t1
    workers_gone, _ = wait_queued(t1, lambda q: q <= base, 180)
    stopped, left = wait_queued(t1, lambda q: q == 0, 180)
    return {
        "shutdown_call": shutdown_call,
        "workers_gone": workers_gone,
        "shutdown": stopped,
        "left_in_queue": left,
    }


def gw_scale_shutdown(address: str, options: dict, n: int, bound: float = 180) -> dict:
    """Scenarios 2, 4 and 9: scale(n) until n worker jobs are in squeue (at most ``bound``
    seconds), then shutdown() until the user's queue is empty."""
    with Clusters(address) as gw:
        cluster = gw.new(options)
        base = queued() or 0
        t0 = time.perf_counter()
        cluster.scale(n)
        call = time.perf_counter() - t0
        scaled, seen = wait_queued(t0, lambda q: q >= base + n, bound)
        if scaled is None:
            raise RuntimeError(f"only {seen - base} of {n} workers reached squeue in {bound} s")
        shutdown = _timed_shutdown(gw, cluster, base)
    return {"scale_call": call, "scale": scaled, **shutdown, "scheduler_jobs": base}


def gw_submit_limit(address: str, options: dict, n: int, limit: int, fewer: int) -> dict:
    """Scenario 10, under a QOS of ``limit`` submitted jobs: another cluster with ``fewer``
    workers first, then scale(n) of this one until ``limit`` jobs are queued (the rest held
    in the gateway) and the reason the user reads; then the other cluster scales to 0: when
    its ``fewer`` jobs have left the queue, and when held workers have taken their places.
    (Scaling this cluster down would drop held workers first: no queued job would end.)"""
    with Clusters(address) as gw:
        other = gw.new(options)
        other.scale(fewer)
        if wait_queued(time.perf_counter(), lambda q: q >= fewer + 1, 60)[0] is None:
            raise RuntimeError(f"the other cluster's {fewer} workers were not queued")
        cluster = gw.new(options)
        t0 = time.perf_counter()
        cluster.scale(n)
        at_limit, seen = wait_queued(t0, lambda q: q >= limit, 60)
        if at_limit is None:
            raise RuntimeError(f"only {seen} of the {limit} jobs the QOS allows were queued")
        time.sleep(2)  # nothing more goes out
        queued_at_limit = queued()
        reason = gw.gateway.get_cluster(cluster.name).options.get("pending_reason")
        t1 = time.perf_counter()
        other.scale(0)
        ended, refilled, last = _drop_and_refill(t1, limit, 90)
        result = {
            "to_limit": at_limit,
            "queued": queued_at_limit,
            "held": n + fewer + 2 - queued_at_limit,  # + 2: the schedulers' jobs
            "pending_reason": reason,
            "ended": ended,
            "refilled": refilled,
            "held_out_after_end": refilled - ended if refilled and ended else None,
            "queued_after": last,
        }
        gw.shutdown(other)
        shutdown = _timed_shutdown(gw, cluster, 0)
    return {**result, **shutdown}


def _drop_and_refill(t0: float, limit: int, timeout: float) -> tuple:
    """Seconds from ``t0`` until fewer than ``limit`` jobs were queued, until ``limit`` were
    again, and the last number seen."""
    ended = refilled = last = None
    while refilled is None and time.perf_counter() - t0 < timeout:
        last = queued()
        now = time.perf_counter() - t0
        if last is not None and last < limit and ended is None:
            ended = now
        elif last is not None and last >= limit and ended is not None:
            refilled = now
        time.sleep(0.01)
    return ended, refilled, last


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


class ListLatency:
    """A Gateway client of its own that times list_clusters calls: some in a row (idle), or
    back to back in a thread (at most ``max_requests`` calls and 120 s)."""

    def __init__(self, address: str, max_requests: int):
        self.client = connect(address)
        self.max_requests = max_requests
        self.during: list[tuple[float, float]] = []  # (start, seconds) of each request
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._ping, daemon=True)

    def timed(self) -> float:
        t = time.perf_counter()
        self.client.list_clusters()
        return time.perf_counter() - t

    def idle(self, requests: int) -> dict:
        return _latency_summary([self.timed() for _ in range(requests)])

    def _ping(self) -> None:
        deadline = time.perf_counter() + 120
        while not self._stop.is_set() and len(self.during) < self.max_requests:
            start = time.perf_counter()
            self.during.append((start, self.timed()))
            if start > deadline:
                break

    def start(self) -> None:
        self._thread.start()

    def stop(self, t0: float) -> dict:
        """Stop the thread; its latencies, timed from ``t0``."""
        self._stop.set()
        self._thread.join(30)
        during = self.during
        slowest_start, _ = max(during, key=lambda r: r[1]) if during else (t0, 0.0)
        return {
            **_latency_summary([seconds for _, seconds in during]),
            "window_s": (during[-1][0] - t0) if during else 0.0,
            "slowest_started_at_s": slowest_start - t0,
        }

    def close(self) -> None:
        self.client.close()


def gw_scale_latency(
    address: str, options: dict, n: int, idle_requests: int, max_requests: int, tail: float
) -> dict:
    """Scenarios 2 (scale(500)) and 6: list_clusters latency, idle and while scaling.

    A second Gateway client calls list_clusters back to back from just before scale(n)
    until ``tail`` seconds after all n jobs are in squeue (at most ``max_requests`` calls
    and 120 s). Then the cluster is shut down (timed too), a third client calling
    list_clusters the same way until the queue is empty.
    """
    with Clusters(address) as gw:
        cluster = gw.new(options)
        latency = ListLatency(address, max_requests)
        gw.others.append(latency)
        idle = latency.idle(idle_requests)
        base = queued() or 0
        t0 = time.perf_counter()
        latency.start()
        cluster.scale(n)
        call = time.perf_counter() - t0
        scaled, seen = wait_queued(t0, lambda q: q >= base + n, 120)
        time.sleep(tail)
        during = latency.stop(t0)
        stopping = ListLatency(address, max_requests)
        gw.others.append(stopping)
        t1 = time.perf_counter()
        stopping.start()
        shutdown = _timed_shutdown(gw, cluster, base)
        during_shutdown = stopping.stop(t1)
    return {
        "scale_call": call,
        "scale": scaled,
        "reached": (seen or 0) - base,
        **shutdown,
        "idle": idle,
        "during": during,
        "during_shutdown": during_shutdown,
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
