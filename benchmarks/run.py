#!/usr/bin/env python3
"""Benchmark slurm-gateway against the stock dask-gateway SLURM backend, dask-jobqueue and
plain sbatch, on the dev SLURM cluster.

Run as root on the dev cluster (``scripts/dev-cluster.sh up``, ``scripts/build-envs.sh``):

    python3 benchmarks/run.py

The orchestrator needs only the standard library. It starts the gateways as the service
account ``slurmgw`` (ours from /opt/slurm-gateway/venv, the stock server from the bench
venv) with the harness the e2e tests use (``harness/``), runs every client as the benchmark
user ``carol`` (``benchmarks/client/``, stock ``dask_gateway`` / ``dask_jobqueue`` clients
from the bench venv), reads slurmctld's RPC counters with ``sdiag``, and prints one table
with ratios. See benchmarks/README.md.

Everything listens on 127.0.0.1, ports 19000-19999. Only the benchmark user's jobs are
ever cancelled; none are left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo: harness, benchmarks

from benchmarks import provision  # noqa: E402
from benchmarks.host import JOB_PYTHON, OURS_SERVER, STARTED, USER, log  # noqa: E402
from benchmarks.observers import other_gateways  # noqa: E402
from benchmarks.report import print_report  # noqa: E402
from benchmarks.scenarios import SCENARIOS, benchmark, cancel_bench_jobs  # noqa: E402
from harness.gateway import SERVICE_ACCOUNT  # noqa: E402
from harness.processes import HarnessError, run, wait_until  # noqa: E402
from harness.slurm import user_jobs  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of scenario 1 (median)")
    parser.add_argument("--rpc-window", type=float, default=60, help="seconds of sdiag counting")
    parser.add_argument("--settle", type=float, default=12, help="seconds before counting")
    parser.add_argument("--skip-stock-rpc", action="store_true", help="scenario 5 for ours only")
    parser.add_argument(
        "--only",
        help=f"comma-separated subset: {','.join(SCENARIOS)} (s2 includes 4 and 2b)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="SECONDS",
        help=f"first wait up to this long for other {SERVICE_ACCOUNT} gateways (e.g. e2e "
        "tests) to stop, so that they do not disturb the timings",
    )
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    parser.add_argument(
        "--table-from", metavar="JSON", help="only print the table of a --json file again"
    )
    return parser.parse_args()


def cannot_run() -> str | None:
    """Why the benchmark cannot run here, if it cannot."""
    if os.geteuid() != 0:
        return "run as root: it starts gateways as slurmgw and clients as carol"
    if run(["sinfo", "--noheader"]).returncode != 0:
        return "no SLURM cluster: run scripts/dev-cluster.sh up"
    for path in (OURS_SERVER, JOB_PYTHON):
        if not path.exists():
            return f"{path} is missing: run scripts/build-envs.sh"
    return None


def prepare(wait_quiet: float) -> None:
    """The user, the bench venv and the sudo rule in place, the user's queue empty, and
    (up to ``wait_quiet`` seconds) no other gateway of the service account running."""
    provision.ensure_user()
    provision.ensure_bench_venv()
    provision.install_sudoers()
    cancel_bench_jobs(f"left over in {USER}'s queue before the benchmark")
    if wait_quiet and other_gateways(set()):
        log(f"waiting up to {wait_quiet:.0f} s for other {SERVICE_ACCOUNT} gateways")
        wait_until(lambda: not other_gateways(set()), wait_quiet, interval=5)


def main() -> int:
    args = parse_args()
    if args.table_from:
        results = json.loads(Path(args.table_from).read_text())
        print_report(results, results.get("total_runtime_s", 0.0))
        return 0
    problem = cannot_run()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="slurm-gateway-bench-"))
    try:
        prepare(args.wait_quiet)
        results = benchmark(args, root)
    except HarnessError as exc:
        print(f"benchmark aborted: {exc}", file=sys.stderr)
        return 1
    finally:
        cancel_bench_jobs("final cleanup")
        provision.remove_sudoers()
        if args.keep_workdir:
            log(f"work directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    results["total_runtime_s"] = time.monotonic() - STARTED
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    print_report(results, results["total_runtime_s"])
    print(f"{USER}'s queue empty at the end: {not user_jobs(USER)}")
    return 1 if results.get("_failures") else 0


if __name__ == "__main__":
    sys.exit(main())
