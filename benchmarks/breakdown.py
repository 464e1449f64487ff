"""Where scenario 1's time goes: each step of our new_cluster() from the logs of a run.

    python3 benchmarks/breakdown.py WORKDIR RESULTS_JSON [--job-logs DIR]

WORKDIR is a work directory kept by ``run.py --keep-workdir``, RESULTS_JSON the same run's
``--json`` file (the client's times). Per cluster of ``ours-live``, in the order the client
started them, from the gateway's log (``gateways/ours-live/gateway.log``, millisecond
timestamps), the scheduler job's log (its first line, with nanoseconds, and dask's
millisecond lines) and the client's own time:

- **admission**: the request reached the gateway (the client's first, unauthenticated POST)
  until the cluster was created (who the user is, limits, log directory, environment check);
- **submission**: until ``sbatch`` returned (log directory as the user, the script, sbatch);
- **SLURM start**: until the job script ran (SLURM's scheduling and launch);
- **job script, python, imports**: until dask created its first preload (credentials, the
  environment's activation, python, distributed and its dashboard imported);
- **scheduler listening**: until dask logged ``Scheduler at``;
- **first heartbeat**: until the gateway logged the scheduler's first heartbeat (RUNNING);
- **client sees RUNNING**: the rest of the client's time (authentication, the wait's answer).

Only the standard library: it runs with any ``python3``, as ``run.py`` does.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from datetime import datetime
from pathlib import Path

STEPS = (
    "admission",
    "submission",
    "SLURM start",
    "job script, python, imports",
    "scheduler listening",
    "first heartbeat",
    "client sees RUNNING",
)
GATEWAY_LINE = re.compile(
    r"\[\w (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) SlurmGateway\]\S*\s+(?P<message>.*)"
)
REQUEST = re.compile(r"(?P<status>201|401) POST /api/v1/clusters/ (?P<ms>[\d.]+)ms")
CREATED = re.compile(r"Created cluster (?P<name>\w+) for user")
SUBMITTED = re.compile(r"Cluster (?P<name>\w+) of user \S+: scheduler job (?P<job>\d+) submitted")
HEARTBEAT = re.compile(r"Cluster (?P<name>\w+) heartbeat \[")
JOB_START = re.compile(r", (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d),(\d{9})")
DASK_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) - ")


def _seconds(stamp: str, fraction: str = "0") -> float:
    """Seconds since the epoch of a local-time stamp (the dev cluster is one host)."""
    whole = datetime.fromisoformat(stamp.replace(" ", "T")).timestamp()
    return whole + float(f"0.{fraction}")


def gateway_events(log: str) -> list[dict]:
    """Per cluster, in creation order: request, created, submitted, heartbeat (seconds)
    and the scheduler job's id."""
    clusters: dict[str, dict] = {}
    first_contact = None
    for line in log.splitlines():
        match = GATEWAY_LINE.search(line)
        if not match:
            continue
        at, message = _seconds(match.group(1)), match.group("message")
        if request := REQUEST.search(message):
            arrived = at - float(request.group("ms")) / 1000
            if request.group("status") == "401":
                first_contact = arrived
            elif clusters:
                last = list(clusters.values())[-1]
                last["request"] = min(first_contact or arrived, arrived)
                first_contact = None
        elif created := CREATED.search(message):
            clusters[created.group("name")] = {"created": at}
        elif submitted := SUBMITTED.search(message):
            entry = clusters.get(submitted.group("name"))
            if entry is not None:
                entry.update(submitted=at, job=submitted.group("job"))
        elif beat := HEARTBEAT.search(message):
            entry = clusters.get(beat.group("name"))
            if entry is not None:
                entry.setdefault("heartbeat", at)
    return list(clusters.values())


def job_events(log: str) -> dict:
    """The job script's start, dask's first preload and ``Scheduler at`` (seconds)."""
    events: dict[str, float] = {}
    for line in log.splitlines():
        if "start" not in events and (start := JOB_START.search(line)):
            events["start"] = _seconds(*start.groups())
        elif dask := DASK_LINE.match(line):
            at = _seconds(*dask.groups())
            if "Creating preload" in line:
                events.setdefault("python", at)
            elif "Scheduler at:" in line:
                events.setdefault("listening", at)
    return events


def steps(cluster: dict, job: dict, client_seconds: float) -> dict[str, float] | None:
    """The seconds of each step of :data:`STEPS`, or None if a point is missing."""
    points = ["request", "created", "submitted"]
    times = [cluster.get(p) for p in points] + [job.get(p) for p in ("start", "python")]
    times += [job.get("listening"), cluster.get("heartbeat")]
    if any(t is None for t in times):
        return None
    result = {name: b - a for name, a, b in zip(STEPS, times, times[1:], strict=False)}
    result["client sees RUNNING"] = client_seconds - (times[-1] - times[0])
    return result


def breakdown(workdir: Path, results: dict, job_logs: Path) -> list[dict[str, float]]:
    """The steps of every cluster of ``ours-live`` in scenario 1 that has all its points."""
    log = (workdir / "gateways" / "ours-live" / "gateway.log").read_text(errors="replace")
    times = results.get("s1", {}).get("ours", {}).get("times", [])
    runs = []
    for cluster, client_seconds in zip(gateway_events(log), times, strict=False):
        found = sorted(job_logs.glob(f"*/*/scheduler-{cluster.get('job', 'none')}.log"))
        job = job_events(found[0].read_text(errors="replace")) if found else {}
        run = steps(cluster, job, client_seconds)
        if run is not None:
            runs.append(run)
    return runs


def table(runs: list[dict[str, float]]) -> str:
    """A Markdown table: each step per run and its median, in milliseconds."""
    head = "| step | " + " | ".join(f"run {n + 1}" for n in range(len(runs))) + " | median |"
    lines = [head, "|---" * (len(runs) + 2) + "|"]
    for name in (*STEPS, "total"):
        values = [sum(run.values()) if name == "total" else run[name] for run in runs]
        cells = " | ".join(f"{v * 1000:.0f}" for v in values)
        lines.append(f"| {name} | {cells} | {statistics.median(values) * 1000:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path, help="a work directory kept by run.py")
    parser.add_argument("results", type=Path, help="the same run's --json file")
    parser.add_argument(
        "--job-logs",
        type=Path,
        default=Path("/var/log/slurm-gateway"),
        help="the root of the users' job logs (the gateway's log_directory without {username})",
    )
    args = parser.parse_args()
    runs = breakdown(args.workdir, json.loads(args.results.read_text()), args.job_logs)
    if not runs:
        raise SystemExit("no cluster of ours-live with all its points in these logs")
    print(table(runs))


if __name__ == "__main__":
    main()
