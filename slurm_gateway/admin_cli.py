"""The subcommands ``slurm-gateway clusters``, ``stop``, ``health`` (admins) and ``logs``
(users).

``clusters``, ``stop`` and ``health`` ask the running gateway over its admin channel
(:mod:`slurm_gateway.admin`: a Unix socket in its state directory, for root and the service
account); ``logs`` reads the calling user's own log directories
(:mod:`slurm_gateway.user_logs`) and needs no gateway.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import sys
from pathlib import Path

from dask_gateway_server.traitlets import Application
from traitlets import Bool, Integer, Unicode

from . import __version__
from .admin import STOP_WAIT, reason_problem, socket_path
from .availability import MAX_DETAIL_CHARS
from .settings import SlurmBackendSettings
from .user_logs import LogsError, UserLogs, printable, select

DEFAULT_CONFIG = "/etc/slurm-gateway/config.py"
DEFAULT_LOG_DIRECTORY = "/var/log/slurm-gateway/{username}"
# The longest answer read from the gateway (a listing of thousands of clusters fits).
MAX_ANSWER_BYTES = 64 << 20
MAX_FAILURE_CHARS = 300
MAX_JOB_IDS = 6  # job ids shown per state in the table (the rest are counted)


def format_age(seconds: float) -> str:
    """``45s``, ``12m``, ``3h05m``, ``2d04h``."""
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def format_memory(size: int) -> str:
    """Bytes as ``512M``, ``4.0G``, ``1.5T`` (powers of 1024)."""
    for unit, scale in (("T", 1 << 40), ("G", 1 << 30)):
        if size >= scale:
            return f"{size / scale:.1f}{unit}"
    return f"{size >> 20}M"


def format_jobs(summary: dict, max_ids: int = MAX_JOB_IDS) -> str:
    """The cluster's jobs as ``scheduler 42 RUNNING; workers RUNNING 43_0 43_1, PENDING 44``
    (at most ``max_ids`` ids per state, then ``+N``)."""
    parts = []
    scheduler = summary.get("scheduler")
    if scheduler:
        parts.append(f"scheduler {scheduler['id']} {scheduler['state'] or '?'}")
    by_state: dict[str, list[str]] = {}
    for worker in summary.get("workers", []):
        by_state.setdefault(worker["state"] or "?", []).append(worker["id"] or "-")
    if by_state:
        groups = []
        for state, ids in sorted(by_state.items()):
            more = f" +{len(ids) - max_ids}" if len(ids) > max_ids else ""
            groups.append(f"{state} {' '.join(ids[:max_ids])}{more}")
        parts.append("workers " + ", ".join(groups))
    return printable("; ".join(parts)) or "-"


def cluster_table(summaries: list[dict]) -> str:
    """The table ``slurm-gateway clusters`` prints: one row per cluster, its failure (if
    any) on the line below. Every field is made printable (a failure may quote a user's
    log line)."""
    if not summaries:
        return "No clusters."
    header = ("USER", "CLUSTER", "STATUS", "AGE", "WORKERS", "CORES", "MEMORY", "JOBS")
    rows = [
        (
            s["user"],
            s["name"],
            s["status"],
            format_age(s["age"]),
            f"{len(s['workers'])}/{s['requested_workers']}",
            str(s["cores"]),
            format_memory(s["memory"]),
            format_jobs(s),
        )
        for s in summaries
    ]
    rows = [tuple(printable(str(field), 200) for field in row) for row in rows]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row, summary in zip([header, *rows], [None, *summaries], strict=True):
        cells = [field.ljust(width) for field, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]))
        if summary and summary.get("failure"):
            lines.append(f"    {printable(summary['failure'], MAX_FAILURE_CHARS)}")
    return "\n".join(lines)


def health_lines(body: dict) -> str:
    """What ``slurm-gateway health`` prints: the overall status, then each part's status and
    message, with what it last said (``detail``) and how long ago on the line below."""
    lines = [f"Health: {printable(str(body.get('status', '?')))}"]
    for part, check in body.get("checks", {}).items():
        status = printable(str(check.get("status", "?"))).upper()
        lines.append(f"{status:<4}  {printable(part)}: {printable(str(check.get('message')))}")
        if "detail" in check:
            age = format_age(float(check.get("age", 0)))
            lines.append(f"      {age} ago: {printable(str(check['detail']), MAX_DETAIL_CHARS)}")
    return "\n".join(lines)


def ask_gateway(path: Path, request: dict, timeout: float) -> dict:
    """Send ``request`` over the admin socket at ``path``; the gateway's answer.

    Raises RuntimeError with a sentence for the admin when the gateway cannot be asked."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n") and len(data) < MAX_ANSWER_BYTES:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise RuntimeError(f"the gateway is not running (nothing answers at {path})") from exc
    except PermissionError as exc:
        raise RuntimeError(
            f"cannot reach {path}: run this as root or as the gateway's service account"
        ) from exc
    except TimeoutError as exc:
        raise RuntimeError(f"the gateway did not answer within {timeout:.0f} s") from exc
    except OSError as exc:
        raise RuntimeError(f"cannot reach the gateway at {path}: {exc.strerror or exc}") from exc
    try:
        return json.loads(data)
    except ValueError as exc:
        raise RuntimeError("the gateway's answer was cut off or not JSON") from exc


class AdminCommand(Application):
    """What ``clusters``, ``stop`` and ``health`` share: finding the running gateway's
    admin socket."""

    version = __version__
    config_file = Unicode(DEFAULT_CONFIG, help="The gateway config file to read.", config=True)
    state_directory = Unicode(
        "",
        help="The gateway's state directory, where its admin socket is "
        "(default: c.SlurmBackend.state_directory of the config file).",
        config=True,
    )
    aliases = {
        "f": "AdminCommand.config_file",
        "config": "AdminCommand.config_file",
        "state-directory": "AdminCommand.state_directory",
    }

    def socket(self) -> Path:
        if self.state_directory:
            return socket_path(self.state_directory)
        if not os.access(self.config_file, os.R_OK):
            self.exit(
                f"cannot read the gateway config {self.config_file} (run as root or the "
                "service account, or give --state-directory)"
            )
        self.load_config_file(self.config_file)
        default = SlurmBackendSettings.state_directory.default_value
        return socket_path(self.config.SlurmBackend.get("state_directory", default))

    def ask(self, request: dict, timeout: float) -> dict:
        try:
            answer = ask_gateway(self.socket(), request, timeout)
        except RuntimeError as exc:
            self.exit(f"slurm-gateway {request['op']}: {exc}")
        if not isinstance(answer, dict) or "error" in answer:
            error = answer.get("error") if isinstance(answer, dict) else answer
            self.exit(f"slurm-gateway {request['op']}: {printable(str(error), 500)}")
        return answer

    def exit(self, message: str | int = 0) -> None:
        if isinstance(message, str):
            print(message, file=sys.stderr)
            message = 1
        super().exit(message)


class ClustersCommand(AdminCommand):
    """List every user's clusters with their jobs, states, ages and resources (admins)."""

    name = "slurm-gateway clusters"
    description = """Every user's active clusters (with --all, the stopped and failed ones
    the gateway still remembers too): owner, name, status, age, workers (running/requested),
    cores and memory held, and the SLURM jobs with their states at the gateway's last poll.
    Asks the running gateway; run as root or its service account."""
    examples = "slurm-gateway clusters\nslurm-gateway clusters --all --json"
    include_stopped = Bool(False, help="Include stopped and failed clusters.", config=True)
    json_output = Bool(
        False, help="Print JSON (a list of clusters) instead of a table.", config=True
    )
    flags = {
        "all": ({"ClustersCommand": {"include_stopped": True}}, "Include stopped clusters."),
        "json": ({"ClustersCommand": {"json_output": True}}, "Print JSON, not a table."),
    }

    def start(self) -> None:
        answer = self.ask({"op": "clusters", "all": self.include_stopped}, 30)
        clusters = answer.get("clusters", [])
        print(json.dumps(clusters, indent=1) if self.json_output else cluster_table(clusters))


class StopCommand(AdminCommand):
    """Stop a user's cluster, with a reason the user is shown (admins)."""

    name = "slurm-gateway stop"
    description = """Stop the cluster NAME (or the cluster whose scheduler job is JOBID, which
    keeps the cluster's secret name off the command line): its jobs are cancelled and it
    fails with "Cluster NAME was stopped by an administrator: REASON", which its user's
    client raises. Asks the running gateway; run as root or its service account."""
    examples = 'slurm-gateway stop 4242 --reason "node maintenance at 14:00"'
    reason = Unicode("", help="Why, shown to the cluster's user (one line).", config=True)
    aliases = {**AdminCommand.aliases, "reason": "StopCommand.reason"}

    def start(self) -> None:
        if len(self.extra_args) != 1:
            self.exit("usage: slurm-gateway stop NAME|SCHEDULER_JOBID [--reason TEXT]")
        problem = reason_problem(self.reason)
        if problem:
            self.exit(f"slurm-gateway stop: {problem}")
        request = {"op": "stop", "cluster": self.extra_args[0], "reason": self.reason}
        answer = self.ask(request, STOP_WAIT + 30)
        done = "stopped" if answer.get("stopped") else "stopping (its jobs are being cancelled)"
        print(f"Cluster {answer['name']} of {answer['user']} {done}. Its user sees:")
        print(f"  {printable(answer['message'])}")


class HealthCommand(AdminCommand):
    """Show the gateway's health with what each failing part said (admins)."""

    name = "slurm-gateway health"
    description = """What /api/health says of SLURM, accounting, the database and the proxy,
    and, for each, what it last answered (SLURM's stderr, the database's error, the SSH
    target, the proxy's URL), which /api/health never shows. Exits 1 when a part fails.
    Asks the running gateway; run as root or its service account."""
    examples = "slurm-gateway health\nslurm-gateway health --json"
    json_output = Bool(False, help="Print the JSON answer instead of lines.", config=True)
    flags = {"json": ({"HealthCommand": {"json_output": True}}, "Print JSON, not lines.")}

    def start(self) -> None:
        body = self.ask({"op": "health"}, 30).get("health", {})
        print(json.dumps(body, indent=1) if self.json_output else health_lines(body))
        if body.get("status") == "fail":
            self.exit(1)


class LogsCommand(Application):
    """Print the end of your clusters' job logs (the latest cluster by default)."""

    name = "slurm-gateway logs"
    version = __version__
    description = """Print the last lines of each job log (scheduler first, then workers) of
    your latest cluster, or of the cluster named CLUSTER, or of a log directory (its path or
    name). Reads only your own log directory, as you, never through a symbolic link."""
    examples = "\n".join(
        [
            "slurm-gateway logs",
            "slurm-gateway logs --list",
            "slurm-gateway logs /var/log/slurm-gateway/alice/20261201-094500-1a2b3c4d -n 100",
        ]
    )
    lines = Integer(
        20, min=0, max=100000, help="Lines printed from the end of each log.", config=True
    )
    max_files = Integer(10, min=1, max=100000, help="Log files printed at most.", config=True)
    list_only = Bool(False, help="List your cluster log directories, newest first.", config=True)
    log_directory = Unicode(
        DEFAULT_LOG_DIRECTORY,
        help="Your log directory, as the site configured it ({username} is replaced).",
        config=True,
    )
    aliases = {
        "n": "LogsCommand.lines",
        "lines": "LogsCommand.lines",
        "max-files": "LogsCommand.max_files",
        "log-directory": "LogsCommand.log_directory",
    }
    flags = {"list": ({"LogsCommand": {"list_only": True}}, "List your cluster log directories.")}

    def start(self) -> None:
        username = pwd.getpwuid(os.getuid()).pw_name
        user_directory = os.path.normpath(self.log_directory.format(username=username))
        if len(self.extra_args) > 1:
            self._fail("usage: slurm-gateway logs [CLUSTER|LOG_DIRECTORY] [-n LINES]")
        try:
            selection = select(self.extra_args[0] if self.extra_args else None, user_directory)
            with UserLogs(user_directory) as logs:
                if self.list_only:
                    self._list(logs)
                else:
                    self._print(logs, logs.find(selection))
        except LogsError as exc:
            self._fail(f"slurm-gateway logs: {exc}")

    def _list(self, logs: UserLogs) -> None:
        directories = logs.directories()
        for directory in directories[:100]:
            files = len(logs.files(directory))
            print(f"{logs.path}/{directory}  {logs.cluster_of(directory) or '-'}  {files} logs")
        if len(directories) > 100:
            print(f"... and {len(directories) - 100} older")

    def _print(self, logs: UserLogs, directory: str) -> None:
        print(f"# cluster {logs.cluster_of(directory) or '?'}: {logs.path}/{directory}")
        files = logs.files(directory)
        for name in files[: self.max_files]:
            print(f"==> {logs.path}/{directory}/{name} <==")
            try:
                for line in logs.tail(directory, name, self.lines):
                    print(line)
            except LogsError as exc:
                print(f"({exc})")
        if len(files) > self.max_files:
            print(f"# {len(files) - self.max_files} more log files (--max-files to see them)")
        if not files:
            print("# no job logs yet")

    def _fail(self, message: str) -> None:
        print(message, file=sys.stderr)
        self.exit(1)
