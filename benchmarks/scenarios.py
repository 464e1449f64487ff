"""The scenarios: which client tasks run against which system, and in what order.

Every measurement that fails is recorded (and listed under the table), not retried; the
benchmark user's jobs are cancelled after each failure and after each gateway's phase."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.clients import Clients
from benchmarks.gateways import BenchGateway, ours_config, stock_config, write_hold_wrapper
from benchmarks.host import (
    FLOOR_PORT,
    JOB_PYTHON,
    JOBQUEUE_PORT,
    OURS_SERVER,
    REPO,
    STOCK_SERVER,
    USER,
    log,
)
from benchmarks.observers import environment_facts, measure_rpcs
from harness.processes import HarnessError, run
from harness.slurm import cancel_user_jobs, submit_limit

SCENARIOS = ("floor", "s1", "s2", "s3", "s5", "s6", "s7", "s8", "s9", "s10")
OURS_OPTIONS = {"worker_cores": 1, "worker_memory": 0.5}
#: Scenario 8: the longest wait for a replacement worker or a FAILED status, seconds (the
#: stock backend notices a dead scheduler by missing heartbeats, about 30 s).
S8_BOUND = 60.0


def cancel_bench_jobs(reason: str) -> None:
    """Cancel the benchmark user's jobs (and only those), saying why."""
    jobs = cancel_user_jobs(USER)
    if jobs:
        log(f"cancelled {len(jobs)} job(s) of {USER} ({reason})")


class Bench:
    """One benchmark run: its options, work directory, clients and results."""

    def __init__(self, args: argparse.Namespace, root: Path):
        self.args = args
        self.only = set(args.only.split(",")) if args.only else set(SCENARIOS)
        self.results: dict = {"environment": environment_facts()}
        self.clients = Clients(root)
        bin_dir = root / "bin"
        bin_dir.mkdir()
        os.chmod(bin_dir, 0o755)
        self.hold_wrapper = write_hold_wrapper(bin_dir)
        self.gateways_root = root / "gateways"
        self.gateways_root.mkdir()
        os.chmod(root, 0o711)
        os.chmod(self.gateways_root, 0o711)

    def wanted(self, *scenarios: str) -> bool:
        return bool(self.only.intersection(scenarios))

    def jq_args(self) -> dict:
        """The arguments of every dask-jobqueue task."""
        return {
            "python": str(JOB_PYTHON),
            "log_directory": str(self.clients.job_logs),
            "port": JOBQUEUE_PORT,
        }

    def gateway(self, name: str) -> BenchGateway:
        """The gateway ``ours-live``, ``ours-held``, ``stock-live`` or ``stock-held``."""
        held = name.endswith("-held")
        if name.startswith("ours-"):
            return BenchGateway(
                name, OURS_SERVER, lambda w: ours_config(name, w, held), self.gateways_root
            )
        return BenchGateway(
            name,
            STOCK_SERVER,
            lambda w: stock_config(name, w, self.hold_wrapper, held),
            self.gateways_root,
        )

    def fail(self, what: str, message: str) -> None:
        log(f"FAILED {what}: {message}")
        self.results.setdefault("_failures", []).append(f"{what}: {message}")

    def measure(self, key: str, system: str, call: Callable[[], dict]) -> None:
        """Run one measurement; a failure is recorded (and printed), not fatal."""
        try:
            self.results.setdefault(key, {})[system] = call()
        except Exception as exc:  # noqa: BLE001 - every failure is reported in the table
            self.results.setdefault(key, {})[system] = {"error": str(exc).splitlines()[0][:300]}
            self.fail(f"{key}/{system}", str(exc))
            cancel_bench_jobs(f"after the failure of {key}/{system}")

    def task(self, key: str, system: str, task: str, args: dict, timeout: float) -> None:
        """Measure ``key`` of ``system`` with a client task without a gateway."""
        self.measure(key, system, lambda: self.clients.run(task, args, timeout))

    def on_gateway(
        self, key: str, system: str, gateway: BenchGateway, task: str, timeout: float, **args
    ) -> None:
        """Measure ``key`` of ``system`` with a client task against ``gateway``."""
        args = {"address": gateway.address, **args}
        self.measure(key, system, lambda: self.clients.run(task, args, timeout, gateway=gateway))

    @contextmanager
    def running(self, *gateways: BenchGateway) -> Iterator[None]:
        """The gateways, started; a gateway that does not start fails the phase, not the run.
        They are stopped and the user's jobs cancelled at the end."""
        try:
            for gateway in gateways:
                gateway.start()
            yield
        except HarnessError as exc:
            self.fail("gateway", str(exc))
        finally:
            for gateway in gateways:
                gateway.stop()
            cancel_bench_jobs(f"after {', '.join(g.name for g in gateways)}")


def floor(bench: Bench) -> None:
    """Plain sbatch: held arrays, a bare scheduler (repeated), a bare scheduler + worker pair."""
    log("floor: sbatch arrays, a bare scheduler, a bare scheduler + worker pair")
    logs = str(bench.clients.job_logs)
    bare = {"python": str(JOB_PYTHON), "port": FLOOR_PORT, "log_directory": logs}
    repeats = bench.args.repeats
    bench.task(
        "floor_scheduler", "floor", "floor_scheduler", {**bare, "repeats": repeats}, 120 * repeats
    )
    for key, n in (("floor_array", 100), ("floor_array_500", 500)):
        bench.task(key, "floor", "floor_array", {"n": n, "log_directory": logs}, 300)
    pair = {"python": str(JOB_PYTHON), "port": FLOOR_PORT, "workers": 16, "log_directory": logs}
    bench.task("floor_pair", "floor", "floor_pair", pair, 300)


def live_gateways(bench: Bench) -> None:
    """Scenarios 1, 3 and 8: workers start."""
    ours, stock = bench.gateway("ours-live"), bench.gateway("stock-live")
    systems = (("ours", ours, OURS_OPTIONS), ("stock", stock, {}))
    repeats = bench.args.repeats
    with bench.running(ours, stock):
        if bench.wanted("s1"):
            log(f"scenario 1: new_cluster() x {repeats}")
            for system, gateway, options in systems:
                bench.on_gateway(
                    "s1",
                    system,
                    gateway,
                    "gw_new_cluster",
                    90 * repeats,
                    options=options,
                    repeats=repeats,
                )
            jobqueue = {"args": bench.jq_args(), "repeats": repeats}
            bench.task("s1", "jobqueue", "jq_new_cluster", jobqueue, 60 * repeats)
        if bench.wanted("s3"):
            log("scenario 3: scale(16) + wait_for_workers(16)")
            for system, gateway, options in systems:
                bench.on_gateway("s3", system, gateway, "gw_scale_wait", 400, options=options, n=16)
            bench.task("s3", "jobqueue", "jq_scale_wait", {"args": bench.jq_args(), "n": 16}, 400)
        if bench.wanted("s8"):
            log(f"scenario 8: scheduler and worker jobs scancelled from outside x {repeats}")
            for system, gateway, options in systems:
                args = {"options": options, "repeats": repeats, "bound": S8_BOUND}
                timeout = repeats * (5 * S8_BOUND + 60)
                bench.on_gateway("s8", system, gateway, "gw_scancel", timeout, **args)


def ours_held(bench: Bench) -> None:
    """Scenarios 2, 4, 2b, 4b, 6 and 5 for ours: workers held."""
    ours = bench.gateway("ours-held")
    with bench.running(ours):
        if bench.wanted("s2"):
            log("scenarios 2 + 4 (ours): scale(100) to squeue, shutdown to empty queue")
            bench.on_gateway(
                "s2", "ours", ours, "gw_scale_shutdown", 400, options=OURS_OPTIONS, n=100
            )
        if bench.wanted("s2", "s6"):
            log("scenarios 2 + 6 (ours): scale(500), list_clusters latency meanwhile")
            bench.on_gateway(
                "s6",
                "ours",
                ours,
                "gw_scale_latency",
                400,
                options={"worker_cores": 1, "worker_memory": 0.25},
                n=500,
                idle_requests=100,
                max_requests=20000,
                tail=5.0,
            )
        if bench.wanted("s5"):
            log("scenario 5 (ours): slurmctld RPCs, 1 x 10 then 10 x 10 idle clusters")
            bench.measure("s5", "ours", lambda: rpc_scenario(bench, ours, OURS_OPTIONS))


def stock_held(bench: Bench) -> None:
    """Scenarios 2, 4 and 5 for the stock backend: workers held."""
    stock = bench.gateway("stock-held")
    with bench.running(stock):
        if bench.wanted("s2"):
            log("scenarios 2 + 4 (stock): scale(100) to squeue, shutdown to empty queue")
            bench.on_gateway("s2", "stock", stock, "gw_scale_shutdown", 400, options={}, n=100)
        if bench.wanted("s5") and not bench.args.skip_stock_rpc:
            log("scenario 5 (stock): slurmctld RPCs, 1 x 10 then 10 x 10 idle clusters")
            bench.measure("s5", "stock", lambda: rpc_scenario(bench, stock, {}))


def jobqueue_held(bench: Bench) -> None:
    """Scenarios 2 and 4 for dask-jobqueue: workers held."""
    log("scenarios 2 + 4 (jobqueue): scale(100) to squeue, close() to empty queue")
    args = {"args": bench.jq_args(), "n": 100}
    bench.task("s2", "jobqueue", "jq_scale_shutdown", args, 400)


def rpc_scenario(bench: Bench, gateway: BenchGateway, options: dict) -> dict:
    """Scenario 5: slurmctld RPCs per minute with 1 x 10, then 10 x 10 idle clusters."""
    args = bench.args
    measured = {}

    def at_checkpoint(message: dict) -> None:
        label = f"{message['clusters']}x{message['workers']}"
        measured[label] = measure_rpcs(args.rpc_window, args.settle, gateway, label)
        measured[label]["queued"] = message["queued"]

    bench.clients.run(
        "gw_idle_clusters",
        {"address": gateway.address, "options": options, "steps": [1, 10], "workers": 10},
        600 + 2 * (args.rpc_window + args.settle),
        on_checkpoint=at_checkpoint,
        gateway=gateway,
    )
    return measured


def ssh_vs_sudo(bench: Bench) -> None:
    """Scenario 7: new_cluster() and scale(100) of ours through SSH (SSHSudoRunner to the
    loopback sshd of scripts/sshd.sh) and with local sudo, the same config, one after the
    other; workers held."""
    out = run(["bash", str(REPO / "scripts" / "sshd.sh"), "up"])
    if out.returncode != 0:
        bench.fail("s7", f"scripts/sshd.sh up failed: {out.stderr[-500:]}")
        return
    repeats = bench.args.repeats
    for system, name in (("sudo", "ours-held"), ("ssh", "ours-ssh-held")):
        gateway = bench.gateway(name)
        with bench.running(gateway):
            log(f"scenario 7 ({system}): new_cluster() x {repeats}, scale(100) to squeue")
            args = {"options": OURS_OPTIONS, "repeats": repeats}
            bench.on_gateway("s7", system, gateway, "gw_new_cluster", 90 * repeats, **args)
            bench.on_gateway(
                "s7b", system, gateway, "gw_scale_shutdown", 400, options=OURS_OPTIONS, n=100
            )


def past_limits(bench: Bench) -> None:
    """Scenario 9: scale(2000) to squeue (ours; the stock backend bounded to 60 s), and
    scenario 10: scale(80) under a QOS of 50 submitted jobs (ours); workers held."""
    ours = bench.gateway("ours-held")
    with bench.running(ours):
        if bench.wanted("s9"):
            log("scenario 9 (ours): scale(2000) to squeue, shutdown to empty queue")
            args = {"options": OURS_OPTIONS, "n": 2000}
            bench.on_gateway("s9", "ours", ours, "gw_scale_shutdown", 600, **args)
        if bench.wanted("s10"):
            log(f"scenario 10 (ours): scale(80) under a QOS of 50 submitted jobs of {USER}")
            args = {"options": OURS_OPTIONS, "n": 80, "limit": 50, "fewer": 10}
            with submit_limit(USER, 50):
                bench.on_gateway("s10", "ours", ours, "gw_submit_limit", 400, **args)
    if bench.wanted("s9"):
        stock = bench.gateway("stock-held")
        with bench.running(stock):
            log("scenario 9 (stock): scale(2000) to squeue, at most 60 s")
            args = {"options": {}, "n": 2000, "bound": 60}
            bench.on_gateway("s9", "stock", stock, "gw_scale_shutdown", 900, **args)


#: The phases in order, each with the scenarios that need it.
PHASES: list[tuple[tuple[str, ...], Callable[[Bench], None]]] = [
    (("floor",), floor),
    (("s1", "s3", "s8"), live_gateways),
    (("s2", "s5", "s6"), ours_held),
    (("s2", "s5"), stock_held),
    (("s2",), jobqueue_held),
    (("s7",), ssh_vs_sudo),
    (("s9", "s10"), past_limits),
]


def benchmark(args: argparse.Namespace, root: Path) -> dict:
    """Run the wanted scenarios in ``root`` (a fresh work directory); return the results."""
    bench = Bench(args, root)
    for scenarios, phase in PHASES:
        if bench.wanted(*scenarios):
            phase(bench)
    bench.results["environment"]["loadavg_at_end"] = os.getloadavg()
    return bench.results
