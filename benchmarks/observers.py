"""What the benchmark observes besides its clients: slurmctld's RPC counters (sdiag), the
RPCs a gateway causes (scenario 5), other gateways of the service account, and the facts
of the host printed with the table."""

from __future__ import annotations

import datetime
import os
import platform
import pwd
import re
import subprocess
import time

from benchmarks.gateways import COUNTED_COMMANDS, BenchGateway
from benchmarks.host import OURS_PYTHON, REPO, USER, BenchError, log
from harness.gateway import SERVICE_ACCOUNT
from harness.processes import cmdline, command_as, pids_of, run

_SDIAG_LINE = re.compile(r"^\s+(\S+)\s+\(\s*(\d+)\)\s+count:(\d+)")


def sdiag_counts() -> tuple[dict[str, int], dict[str, int]]:
    """RPC counts since the last reset: by user and by message type."""
    out = run(["sdiag"])
    if out.returncode != 0:
        raise BenchError(f"sdiag failed: {out.stderr.strip()}")
    users, types, section = {}, {}, None
    for line in out.stdout.splitlines():
        if line.startswith("Remote Procedure Call statistics by message type"):
            section = types
        elif line.startswith("Remote Procedure Call statistics by user"):
            section = users
        elif line and not line[0].isspace():
            section = None
        elif section is not None:
            match = _SDIAG_LINE.match(line)
            if match:
                section[match.group(1)] = int(match.group(3))
    return users, types


def other_gateways(mine: set[int]) -> list[str]:
    """Gateway processes of the service account that this benchmark did not start."""
    uid = pwd.getpwnam(SERVICE_ACCOUNT).pw_uid
    return [f"{pid}: {cmdline(pid)[:120]}" for pid in pids_of(uid, "gateway") if pid not in mine]


def _user_rpcs(user: str) -> int:
    users, _ = sdiag_counts()
    return users.get(user, 0)


def rpc_cost(gateway: BenchGateway, command: str, repeats: int = 3) -> float | None:
    """slurmctld RPCs of one call of ``command`` as the gateway last ran it, measured by
    running it as the benchmark user (whose RPCs nothing else makes at that moment)."""
    argv = gateway.last_args(command)
    if argv is None:
        return None
    before = _user_rpcs(USER)
    for _ in range(repeats):
        run(command_as(USER, [f"/usr/bin/{command}", *argv]), timeout=60)
    return (_user_rpcs(USER) - before) / repeats


def measure_rpcs(window: float, settle: float, gateway: BenchGateway, label: str) -> dict:
    """slurmctld RPCs caused by ``gateway`` per minute, over ``window`` seconds.

    The service account's own sdiag line would also count any other gateway running as
    the same account (the e2e tests use it). So the gateway's queries are counted by
    wrappers and weighed with their measured RPC cost; RPCs it makes as the benchmark user
    (sbatch, scancel through sudo) come from that user's sdiag line, which only this
    benchmark uses.
    """
    log(f"  {label}: settling {settle:.0f} s, then counting slurmctld RPCs for {window:.0f} s")
    time.sleep(settle)
    others_before = other_gateways(gateway.pids())
    calls_before = gateway.calls()
    out = run(["sdiag", "--reset"])
    if out.returncode != 0:
        raise BenchError(f"sdiag --reset failed: {out.stderr.strip()}")
    t0 = time.monotonic()
    time.sleep(window)
    users, types = sdiag_counts()
    calls_after = gateway.calls()
    elapsed = time.monotonic() - t0
    others = sorted(set(others_before) | set(other_gateways(gateway.pids())))
    calls = {c: calls_after[c] - calls_before[c] for c in COUNTED_COMMANDS}
    costs = {c: rpc_cost(gateway, c) for c in COUNTED_COMMANDS if calls[c]}
    queries = sum(calls[c] * (costs[c] or 0) for c in costs)
    as_user = users.get(USER, 0)
    per_minute = 60 / elapsed
    return {
        "window_s": elapsed,
        "gateway_per_min": (queries + as_user) * per_minute,
        "calls_per_min": {c: n * per_minute for c, n in calls.items()},
        "rpcs_per_call": costs,
        "as_user_per_min": as_user * per_minute,
        "sdiag_service_account_per_min": users.get(SERVICE_ACCOUNT, 0) * per_minute,
        "sdiag_by_user_per_min": {u: n * per_minute for u, n in users.items()},
        "by_type": dict(sorted(types.items(), key=lambda kv: -kv[1])[:6]),
        "other_gateways": others,
    }


def _first_line(argv: list[str]) -> str:
    try:
        out = run(argv, timeout=30, cwd="/")
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""


def environment_facts() -> dict:
    """The host, SLURM, the tree and what else runs, for the report's header."""
    installed = _first_line(
        [
            str(OURS_PYTHON),
            "-c",
            "import slurm_gateway, os; print(slurm_gateway.__version__, "
            "os.path.dirname(slurm_gateway.__file__))",
        ]
    )
    dirty = run(["git", "-C", str(REPO), "status", "--porcelain"]).stdout.strip()
    others = run(["squeue", "--noheader", "--format=%u"]).stdout.split()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "slurm": _first_line(["sinfo", "--version"]),
        "commit": _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
        + (" (+ uncommitted changes)" if dirty else ""),
        "ours_installed": installed,
        "other_users_jobs_at_start": len([u for u in others if u != USER]),
        "other_gateways_at_start": len(other_gateways(set())),
        "loadavg_at_start": os.getloadavg(),
    }
