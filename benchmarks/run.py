#!/usr/bin/env python3
"""Benchmark slurm-gateway against the stock dask-gateway SLURM backend, dask-jobqueue and
plain sbatch, on the dev SLURM cluster.

Run as root on the dev cluster (``scripts/dev-cluster.sh up``, ``scripts/build-envs.sh``):

    python3 benchmarks/run.py

The orchestrator needs only the standard library. It starts the gateways as the service
account ``slurmgw`` (ours from /opt/slurm-gateway/venv, the stock server from the bench
venv), runs every client as the benchmark user ``carol`` (``benchmarks/bench_client.py``,
stock ``dask_gateway`` / ``dask_jobqueue`` clients from the bench venv), reads slurmctld's
RPC counters with ``sdiag``, and prints one table with ratios. See benchmarks/README.md.

Everything listens on 127.0.0.1, ports 19000-19999. Only the benchmark user's jobs are
ever cancelled; none are left behind.
"""

from __future__ import annotations

import argparse
import datetime
import grp
import json
import os
import platform
import pwd
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PREFIX = Path("/opt/slurm-gateway")
BENCH_VENV = PREFIX / "bench-venv"
BENCH_PYTHON = BENCH_VENV / "bin" / "python"
LAUNCHER = BENCH_VENV / "bin" / "dask-gateway-jobqueue-launcher"
STOCK_SERVER = BENCH_VENV / "bin" / "dask-gateway-server"
OURS_SERVER = PREFIX / "venv" / "bin" / "slurm-gateway"
JOB_PYTHON = PREFIX / "envs" / "default" / "bin" / "python"
RUNUSER = "/usr/sbin/runuser"
SERVICE_ACCOUNT = "slurmgw"
USER = "carol"
USER_GROUP = "dask-users"
SUDOERS = Path("/etc/sudoers.d/slurm-gateway-bench")
BENCH_REQUIREMENTS = [
    "dask-gateway==2026.3.0",
    "dask-jobqueue",
    "distributed==2026.8.0",
    "dask==2026.8.0",
]

# Ports (127.0.0.1 only). Each gateway: proxy = port, API = port + 1.
PORTS = {"ours-live": 19000, "ours-held": 19010, "stock-live": 19100, "stock-held": 19110}
JOBQUEUE_PORT = 19500  # + i for the i-th local scheduler
FLOOR_PORT = 19600
# SLURM query commands the gateways run as the service account, through counting wrappers.
COUNTED_COMMANDS = ("squeue", "sacct", "scontrol")

STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def run(argv: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


class BenchError(Exception):
    pass


# -- processes ----------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (parent pid, uid, start time) of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            uid = os.stat(f"/proc/{entry}").st_uid
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry)] = (int(fields[1]), uid, int(fields[19]))
    return table


def descendants(pid: int) -> dict[int, int]:
    """The process ``pid`` and all its descendants: pid -> start time."""
    table = _proc_table()
    found = {pid: table[pid][2]} if pid in table else {}
    grew = True
    while grew:
        grew = False
        for child, (parent, _, start) in table.items():
            if parent in found and child not in found:
                found[child] = start
                grew = True
    return found


def kill_exact(processes: dict[int, int]) -> None:
    """SIGKILL the given processes (pid -> start time) that still exist, by pid only."""
    table = _proc_table()
    for pid, start in processes.items():
        if pid in table and table[pid][2] == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


# -- setup --------------------------------------------------------------------------------


def ensure_user() -> None:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        log(f"creating user {USER} (group {USER_GROUP})")
        out = run(["useradd", "-m", "-G", USER_GROUP, USER])
        if out.returncode != 0:
            raise BenchError(f"useradd {USER}: {out.stderr.strip()}") from None
    if USER not in grp.getgrnam(USER_GROUP).gr_mem:
        raise BenchError(f"{USER} must be in group {USER_GROUP} (the gateway's sudo rule)")


def ensure_bench_venv() -> None:
    if BENCH_PYTHON.exists() and STOCK_SERVER.exists() and LAUNCHER.exists():
        return
    log(f"creating {BENCH_VENV} (our package, stock dask-gateway-server, dask-jobqueue)")
    steps = [
        ["/usr/bin/python3", "-m", "venv", str(BENCH_VENV)],
        [str(BENCH_VENV / "bin" / "pip"), "install", "-q", str(REPO), *BENCH_REQUIREMENTS],
        ["chmod", "-R", "a+rX", str(BENCH_VENV)],
    ]
    for step in steps:
        out = run(step, timeout=1200)
        if out.returncode != 0:
            raise BenchError(f"{' '.join(step)}: {out.stderr[-2000:]}")


def install_sudoers() -> None:
    """The stock backend's documented rule: slurmgw may run the launcher as the user."""
    text = textwrap.dedent(f"""\
        # Installed by slurm-gateway benchmarks/run.py (removed at its end): the stock
        # dask-gateway SLURM backend runs its launcher as the benchmark user.
        Defaults:{SERVICE_ACCOUNT} !requiretty
        {SERVICE_ACCOUNT} ALL = ({USER}) NOPASSWD: {LAUNCHER}
        """)
    fd, tmp = tempfile.mkstemp(prefix="sudoers-bench-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o440)
    check = run(["visudo", "-cf", tmp])
    if check.returncode != 0:
        os.unlink(tmp)
        raise BenchError(f"sudoers rule refused by visudo: {check.stdout}{check.stderr}")
    shutil.move(tmp, SUDOERS)
    os.chown(SUDOERS, 0, 0)


def remove_sudoers() -> None:
    try:
        SUDOERS.unlink()
    except FileNotFoundError:
        pass


def user_jobs() -> list[str]:
    out = run(["squeue", "--noheader", "--array", f"--user={USER}", "--format=%i %j %T"])
    if out.returncode != 0:
        raise BenchError(f"squeue failed: {out.stderr.strip()}")
    return [line for line in out.stdout.splitlines() if line.strip()]


def cancel_user_jobs(reason: str) -> None:
    jobs = user_jobs()
    if jobs:
        log(f"cancelling {len(jobs)} job(s) of {USER} ({reason})")
        run(["scancel", f"--user={USER}"])
        deadline = time.monotonic() + 60
        while user_jobs() and time.monotonic() < deadline:
            time.sleep(1)


def environment_facts() -> dict:
    def first_line(argv):
        try:
            out = run(argv, timeout=30)
            return out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
        except (OSError, subprocess.TimeoutExpired):
            return ""

    installed = first_line(
        [
            str(PREFIX / "venv" / "bin" / "python"),
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
        "slurm": first_line(["sinfo", "--version"]),
        "commit": first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
        + (" (+ uncommitted changes)" if dirty else ""),
        "ours_installed": installed,
        "other_users_jobs_at_start": len([u for u in others if u != USER]),
        "other_gateways_at_start": len(other_gateways(set())),
        "loadavg_at_start": os.getloadavg(),
    }


# -- gateways -----------------------------------------------------------------------------


def ours_config(name: str, workdir: Path, held: bool) -> str:
    port = PORTS[name]
    lines = textwrap.dedent(f"""\
        c = get_config()
        c.SlurmGateway.address = "127.0.0.1:{port + 1}"
        c.Proxy.address = "127.0.0.1:{port}"
        c.SlurmGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
        c.SlurmBackend.state_directory = "{workdir / "state"}"
        c.SlurmBackend.listen_host = "127.0.0.1"
        c.SlurmBackend.stop_clusters_on_shutdown = True  # the benchmark leaves nothing
        # The same commands, through wrappers that count calls (scenario 5).
        c.SlurmBackend.squeue = "{workdir / "bin" / "squeue"}"
        c.SlurmBackend.sacct = "{workdir / "bin" / "sacct"}"
        c.SlurmBackend.scontrol = "{workdir / "bin" / "scontrol"}"
        c.SlurmClusterConfig.scheduler_partition = "schedulers"
        c.SlurmClusterConfig.partition = "workers"
        c.SlurmClusterConfig.scheduler_memory = "{"0.4 G" if held else "1 G"}"
        c.SlurmClusterConfig.walltime = "0-01:00:00"
        """)
    if held:
        lines += textwrap.dedent("""\
        # Workers stay queued (held): scenarios 2, 4, 5, 6 measure SLURM acceptance,
        # and must not start hundreds of dask workers on this 2-core host.
        c.SlurmClusterConfig.worker_extra_directives = ["--hold"]
        """)
    return lines


def stock_config(name: str, workdir: Path, wrapper: Path, held: bool) -> str:
    port = PORTS[name]
    lines = textwrap.dedent(f"""\
        # The stock dask-gateway-server SLURM backend, configured as its documentation says.
        from dask_gateway_server.backends.jobqueue.slurm import SlurmBackend

        class LoopbackSlurmBackend(SlurmBackend):
            # The only change to the stock class: schedulers listen on 127.0.0.1 instead of
            # 0.0.0.0 (only loopback carries traffic on the benchmark machines).
            default_host = "127.0.0.1"

        c = get_config()
        c.DaskGateway.backend_class = LoopbackSlurmBackend
        c.DaskGateway.address = "127.0.0.1:{port + 1}"
        c.Proxy.address = "127.0.0.1:{port}"
        c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
        c.SlurmBackend.dask_gateway_jobqueue_launcher = "{LAUNCHER}"
        c.SlurmClusterConfig.scheduler_cmd = [
            "{JOB_PYTHON}", "-m", "distributed.cli.dask_scheduler"
        ]
        c.SlurmClusterConfig.worker_cmd = [
            "{JOB_PYTHON}", "-m", "distributed.cli.dask_worker", "--host", "127.0.0.1"
        ]
        c.SlurmClusterConfig.partition = "workers"
        # squeue through a wrapper that counts calls (scenario 5).
        c.SlurmBackend.status_command = "{workdir / "bin" / "squeue"}"
        c.SlurmClusterConfig.scheduler_cores = 1
        c.SlurmClusterConfig.scheduler_memory = "{"0.4 G" if held else "1 G"}"
        c.SlurmClusterConfig.worker_cores = 1
        c.SlurmClusterConfig.worker_memory = "0.5 G"
        """)
    if held:
        lines += textwrap.dedent(f"""\
        # Worker jobs are submitted held (as ours are), through a wrapper that adds --hold
        # to worker submissions only. Queued workers would time out after the stock 60 s
        # and be resubmitted: allow 600 s (as Purdue raised it) so the RPC count sees a
        # steady state.
        c.SlurmBackend.submit_command = "{wrapper}"
        c.SlurmBackend.worker_start_timeout = 600
        """)
    return lines


class GatewayProcess:
    """One gateway server run as the service account with a generated config."""

    def __init__(self, name: str, server: Path, make_config, root: Path):
        self.name = name
        self.server = server
        self.workdir = root / name
        self.workdir.mkdir()
        self.bin = self.workdir / "bin"
        self.bin.mkdir()
        for command in COUNTED_COMMANDS:
            wrapper = self.bin / command
            wrapper.write_text(
                "#!/bin/sh\n"
                "# Counts the gateway's calls (benchmark scenario 5), then runs the command.\n"
                f"echo x >> {self.workdir}/calls-{command}\n"
                f"printf '%s\\0' \"$@\" > {self.workdir}/last-{command}.args\n"
                f'exec /usr/bin/{command} "$@"\n'
            )
            os.chmod(wrapper, 0o755)
        self.config = self.workdir / "config.py"
        self.config.write_text(make_config(self.workdir))
        self.log_path = self.workdir / "gateway.log"
        self.proxy = f"127.0.0.1:{PORTS[name]}"
        self.address = f"http://{self.proxy}"
        self.proc: subprocess.Popen | None = None
        self.processes: dict[int, int] = {}
        for path in (self.workdir, self.bin, self.config, *self.bin.iterdir()):
            shutil.chown(path, SERVICE_ACCOUNT)
        os.chmod(self.workdir, 0o700)

    def calls(self) -> dict[str, int]:
        """How many times the gateway ran each SLURM query command so far."""
        counts = {}
        for command in COUNTED_COMMANDS:
            try:
                counts[command] = len((self.workdir / f"calls-{command}").read_text().split())
            except FileNotFoundError:
                counts[command] = 0
        return counts

    def last_args(self, command: str) -> list[str] | None:
        try:
            raw = (self.workdir / f"last-{command}.args").read_bytes()
        except FileNotFoundError:
            return None
        return [a.decode() for a in raw.split(b"\0")[:-1]]

    def start(self) -> None:
        log(f"starting gateway {self.name} on {self.proxy}")
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [RUNUSER, "-u", SERVICE_ACCOUNT, "--", str(self.server), "-f", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd="/",
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            )
        deadline = time.monotonic() + 60
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"gateway {self.name} did not start:\n{self.log_tail()}")
            time.sleep(0.2)
        self.processes = descendants(self.proc.pid)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.address}/api/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def pids(self) -> set[int]:
        if self.proc is None or self.proc.poll() is not None:
            return set()
        self.processes.update(descendants(self.proc.pid))
        return set(self.processes)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.pids()
        if self.proc.poll() is None:
            log(f"stopping gateway {self.name}")
            self.proc.terminate()  # runuser passes SIGTERM on to the server
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        time.sleep(0.5)
        kill_exact({p: s for p, s in self.processes.items() if p != self.proc.pid})
        self.proc = None

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


# -- clients as the benchmark user --------------------------------------------------------


class Clients:
    def __init__(self, root: Path):
        self.root = root
        self.directory = root / "client"
        self.directory.mkdir()
        self.script = self.directory / "bench_client.py"
        shutil.copy(HERE / "bench_client.py", self.script)
        self.logs = root / "client-logs"
        self.logs.mkdir()
        self.job_logs = root / "job-logs"  # for jobqueue and the floor jobs
        self.job_logs.mkdir()
        shutil.chown(self.job_logs, USER)
        for path in (self.directory, self.script, self.logs):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        self.count = 0

    def run(self, task: str, args: dict, timeout: float, on_checkpoint=None, gateway=None):
        """Run one client task as the benchmark user; return its result dict."""
        self.count += 1
        home = pwd.getpwnam(USER).pw_dir
        log_file = self.logs / f"{self.count:02d}-{task}.log"
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": home,
            "USER": USER,
            "LOGNAME": USER,
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
        }
        argv = [RUNUSER, "-u", USER, "--", str(BENCH_PYTHON), str(self.script), task]
        with open(log_file, "wb") as err:
            proc = subprocess.Popen(
                [*argv, json.dumps(args)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=home,
                env=env,
            )
        deadline = time.monotonic() + timeout
        buffer, result, error = b"", None, None
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchError(f"client {task} did not finish within {timeout:.0f} s")
                ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 1.0))
                if not ready:
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    text = line.decode(errors="replace")
                    if not text.startswith("@@"):
                        continue
                    message = json.loads(text[2:])
                    kind = message.pop("kind")
                    if kind == "checkpoint":
                        if on_checkpoint is not None:
                            on_checkpoint(message)
                        proc.stdin.write(b"go\n")
                        proc.stdin.flush()
                    elif kind == "result":
                        result = message
                        with open(log_file, "a") as out:
                            out.write(f"\nresult: {json.dumps(result)}\n")
                    elif kind == "error":
                        error = message["error"]
            proc.wait(60)
        finally:
            if proc.poll() is None:
                kill_exact(descendants(proc.pid))
                proc.wait()
        if result is None:
            tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-25:])
            gateway_tail = f"\ngateway log:\n{gateway.log_tail(25)}" if gateway else ""
            raise BenchError(
                f"client {task} failed: {error or f'exit {proc.returncode}'}\n"
                f"client log ({log_file}):\n{tail}{gateway_tail}"
            )
        return result


# -- slurmctld RPC counters -----------------------------------------------------------------

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
    found = []
    for pid, (_, owner, _) in _proc_table().items():
        if owner == uid and pid not in mine:
            line = cmdline(pid)
            if "gateway" in line:
                found.append(f"{pid}: {line[:120]}")
    return found


def _user_rpcs(user: str) -> int:
    users, _ = sdiag_counts()
    return users.get(user, 0)


def rpc_cost(gateway: GatewayProcess, command: str, repeats: int = 3) -> float | None:
    """slurmctld RPCs of one call of ``command`` as the gateway last ran it, measured by
    running it as the benchmark user (whose RPCs nothing else makes at that moment)."""
    argv = gateway.last_args(command)
    if argv is None:
        return None
    before = _user_rpcs(USER)
    for _ in range(repeats):
        run([RUNUSER, "-u", USER, "--", f"/usr/bin/{command}", *argv], timeout=60)
    return (_user_rpcs(USER) - before) / repeats


def measure_rpcs(window: float, settle: float, gateway: GatewayProcess, label: str) -> dict:
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


# -- the benchmark ------------------------------------------------------------------------


def guarded(results: dict, key: str, system: str, call):
    """Run one measurement; a failure is recorded (and printed), not fatal."""
    try:
        value = call()
        results.setdefault(key, {})[system] = value
        return value
    except Exception as exc:  # noqa: BLE001 - every failure is reported in the table
        message = str(exc)
        log(f"FAILED {key}/{system}: {message}")
        results.setdefault(key, {})[system] = {"error": message.splitlines()[0][:300]}
        results.setdefault("_failures", []).append(f"{key}/{system}: {message}")
        cancel_user_jobs(f"after the failure of {key}/{system}")
        return None


def benchmark(args, root: Path) -> dict:
    results: dict = {"environment": environment_facts()}
    clients = Clients(root)
    jq_args = {"python": str(JOB_PYTHON), "log_directory": str(clients.job_logs)}
    ours_options = {"worker_cores": 1, "worker_memory": 0.5}
    only = set(args.only.split(",")) if args.only else None

    def wanted(name: str) -> bool:
        return only is None or name in only

    bin_dir = root / "bin"
    bin_dir.mkdir()
    os.chmod(bin_dir, 0o755)
    wrapper = bin_dir / "sbatch-hold-workers"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# Submit the stock backend's worker jobs held (like ours in these scenarios).\n"
        'case "$*" in *dask-worker-*) exec /usr/bin/sbatch --hold "$@" ;; esac\n'
        'exec /usr/bin/sbatch "$@"\n'
    )
    os.chmod(wrapper, 0o755)
    gateways_root = root / "gateways"
    gateways_root.mkdir()
    os.chmod(root, 0o711)
    os.chmod(gateways_root, 0o711)

    # -- floor: plain sbatch --------------------------------------------------------------
    if wanted("floor"):
        log("floor: sbatch arrays and a bare scheduler + worker pair")
        guarded(
            results,
            "floor_array",
            "floor",
            lambda: clients.run(
                "floor_array", {"n": 100, "log_directory": str(clients.job_logs)}, 300
            ),
        )
        guarded(
            results,
            "floor_array_500",
            "floor",
            lambda: clients.run(
                "floor_array", {"n": 500, "log_directory": str(clients.job_logs)}, 300
            ),
        )
        guarded(
            results,
            "floor_pair",
            "floor",
            lambda: clients.run(
                "floor_pair",
                {
                    "python": str(JOB_PYTHON),
                    "port": FLOOR_PORT,
                    "workers": 16,
                    "log_directory": str(clients.job_logs),
                },
                300,
            ),
        )

    # -- live gateways: scenarios 1 and 3 -------------------------------------------------
    if wanted("s1") or wanted("s3"):
        ours = GatewayProcess(
            "ours-live",
            OURS_SERVER,
            lambda workdir: ours_config("ours-live", workdir, held=False),
            gateways_root,
        )
        stock = GatewayProcess(
            "stock-live",
            STOCK_SERVER,
            lambda workdir: stock_config("stock-live", workdir, wrapper, held=False),
            gateways_root,
        )
        try:
            ours.start()
            stock.start()
            if wanted("s1"):
                log(f"scenario 1: new_cluster() x {args.repeats}")
                for system, gateway, options in (
                    ("ours", ours, ours_options),
                    ("stock", stock, {}),
                ):
                    guarded(
                        results,
                        "s1",
                        system,
                        lambda g=gateway, o=options: clients.run(
                            "gw_new_cluster",
                            {"address": g.address, "options": o, "repeats": args.repeats},
                            90 * args.repeats,
                            gateway=g,
                        ),
                    )
                guarded(
                    results,
                    "s1",
                    "jobqueue",
                    lambda: clients.run(
                        "jq_new_cluster",
                        {"args": {**jq_args, "port": JOBQUEUE_PORT}, "repeats": args.repeats},
                        60 * args.repeats,
                    ),
                )
            if wanted("s3"):
                log("scenario 3: scale(16) + wait_for_workers(16)")
                for system, gateway, options in (
                    ("ours", ours, ours_options),
                    ("stock", stock, {}),
                ):
                    guarded(
                        results,
                        "s3",
                        system,
                        lambda g=gateway, o=options: clients.run(
                            "gw_scale_wait",
                            {"address": g.address, "options": o, "n": 16},
                            400,
                            gateway=g,
                        ),
                    )
                guarded(
                    results,
                    "s3",
                    "jobqueue",
                    lambda: clients.run(
                        "jq_scale_wait", {"args": {**jq_args, "port": JOBQUEUE_PORT}, "n": 16}, 400
                    ),
                )
        except BenchError as exc:  # a gateway that did not start: go on without it
            log(f"FAILED: {exc}")
            results.setdefault("_failures", []).append(str(exc))
        finally:
            ours.stop()
            stock.stop()
            cancel_user_jobs("after the live gateways")

    # -- ours, workers held: scenarios 2, 4, 5, 6 -----------------------------------------
    if wanted("s2") or wanted("s5") or wanted("s6"):
        ours = GatewayProcess(
            "ours-held",
            OURS_SERVER,
            lambda workdir: ours_config("ours-held", workdir, held=True),
            gateways_root,
        )
        try:
            ours.start()
            if wanted("s2"):
                log("scenarios 2 + 4 (ours): scale(100) to squeue, shutdown to empty queue")
                guarded(
                    results,
                    "s2",
                    "ours",
                    lambda: clients.run(
                        "gw_scale_shutdown",
                        {"address": ours.address, "options": ours_options, "n": 100},
                        400,
                        gateway=ours,
                    ),
                )
            if wanted("s6") or wanted("s2"):
                log("scenarios 2 + 6 (ours): scale(500), list_clusters latency meanwhile")
                guarded(
                    results,
                    "s6",
                    "ours",
                    lambda: clients.run(
                        "gw_scale_latency",
                        {
                            "address": ours.address,
                            "options": {"worker_cores": 1, "worker_memory": 0.25},
                            "n": 500,
                            "idle_requests": 100,
                            "max_requests": 20000,
                            "tail": 5.0,
                        },
                        400,
                        gateway=ours,
                    ),
                )
            if wanted("s5"):
                log("scenario 5 (ours): slurmctld RPCs, 1 x 10 then 10 x 10 idle clusters")
                guarded(
                    results,
                    "s5",
                    "ours",
                    lambda: rpc_scenario(clients, ours, ours_options, args),
                )
        except BenchError as exc:  # a gateway that did not start: go on without it
            log(f"FAILED: {exc}")
            results.setdefault("_failures", []).append(str(exc))
        finally:
            ours.stop()
            cancel_user_jobs("after our held-workers gateway")

    # -- stock, workers held: scenarios 2, 4, 5 ---------------------------------------------
    if wanted("s2") or wanted("s5"):
        stock = GatewayProcess(
            "stock-held",
            STOCK_SERVER,
            lambda workdir: stock_config("stock-held", workdir, wrapper, held=True),
            gateways_root,
        )
        try:
            stock.start()
            if wanted("s2"):
                log("scenarios 2 + 4 (stock): scale(100) to squeue, shutdown to empty queue")
                guarded(
                    results,
                    "s2",
                    "stock",
                    lambda: clients.run(
                        "gw_scale_shutdown",
                        {"address": stock.address, "options": {}, "n": 100},
                        400,
                        gateway=stock,
                    ),
                )
            if wanted("s5") and not args.skip_stock_rpc:
                log("scenario 5 (stock): slurmctld RPCs, 1 x 10 then 10 x 10 idle clusters")
                guarded(results, "s5", "stock", lambda: rpc_scenario(clients, stock, {}, args))
        except BenchError as exc:  # a gateway that did not start: go on without it
            log(f"FAILED: {exc}")
            results.setdefault("_failures", []).append(str(exc))
        finally:
            stock.stop()
            cancel_user_jobs("after the stock held-workers gateway")

    # -- jobqueue, workers held: scenarios 2 and 4 ------------------------------------------
    if wanted("s2"):
        log("scenarios 2 + 4 (jobqueue): scale(100) to squeue, close() to empty queue")
        guarded(
            results,
            "s2",
            "jobqueue",
            lambda: clients.run(
                "jq_scale_shutdown", {"args": {**jq_args, "port": JOBQUEUE_PORT}, "n": 100}, 400
            ),
        )

    results["environment"]["loadavg_at_end"] = os.getloadavg()
    return results


def rpc_scenario(clients: Clients, gateway: GatewayProcess, options: dict, args) -> dict:
    measured = {}

    def at_checkpoint(message: dict) -> None:
        label = f"{message['clusters']}x{message['workers']}"
        measured[label] = measure_rpcs(args.rpc_window, args.settle, gateway, label)
        measured[label]["queued"] = message["queued"]

    clients.run(
        "gw_idle_clusters",
        {"address": gateway.address, "options": options, "steps": [1, 10], "workers": 10},
        600 + 2 * (args.rpc_window + args.settle),
        on_checkpoint=at_checkpoint,
        gateway=gateway,
    )
    return measured


# -- the table ----------------------------------------------------------------------------


def _get(results: dict, *path):
    value = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def rows(results: dict) -> list[tuple[str, dict]]:
    """(label, {system: number or error string}) for each line of the table."""

    def pick(key, system, *path, scale=1.0):
        entry = _get(results, key, system)
        if entry is None:
            return None
        if isinstance(entry, dict) and "error" in entry:
            return "FAILED"
        value = _get(entry, *path)
        return None if value is None else value * scale

    s5 = {}
    for system in ("ours", "stock"):
        small = pick("s5", system, "1x10", "gateway_per_min")
        big = pick("s5", system, "10x10", "gateway_per_min")
        s5[system] = (small, big)
    growth = {
        system: (
            big / small
            if isinstance(small, float) and small and isinstance(big, float)
            else ("FAILED" if "FAILED" in (small, big) else None)
        )
        for system, (small, big) in s5.items()
    }
    return [
        (
            "1. new_cluster() to RUNNING, median of runs [s]",
            {
                "ours": pick("s1", "ours", "median"),
                "stock": pick("s1", "stock", "median"),
                "jobqueue": pick("s1", "jobqueue", "median"),
                "floor": pick("floor_pair", "floor", "scheduler_up"),
            },
        ),
        (
            "2. scale(100) to 100 jobs in squeue [s]",
            {
                "ours": pick("s2", "ours", "scale"),
                "stock": pick("s2", "stock", "scale"),
                "jobqueue": pick("s2", "jobqueue", "scale"),
                "floor": pick("floor_array", "floor", "array"),
            },
        ),
        (
            "2b. scale(500) to 500 jobs in squeue [s]",
            {
                "ours": pick("s6", "ours", "scale"),
                "floor": pick("floor_array_500", "floor", "array"),
            },
        ),
        (
            "3. scale(16) + wait_for_workers(16) [s]",
            {
                "ours": pick("s3", "ours", "seconds"),
                "stock": pick("s3", "stock", "seconds"),
                "jobqueue": pick("s3", "jobqueue", "seconds"),
                "floor": pick("floor_pair", "floor", "workers"),
            },
        ),
        (
            "4. shutdown, 100 workers: worker jobs gone [s]",
            {
                "ours": pick("s2", "ours", "workers_gone"),
                "stock": pick("s2", "stock", "workers_gone"),
                "jobqueue": pick("s2", "jobqueue", "shutdown"),  # all its jobs are workers
                "floor": pick("floor_array", "floor", "array_cancel"),
            },
        ),
        (
            "4. shutdown, 100 workers: queue empty [s]",
            {
                "ours": pick("s2", "ours", "shutdown"),
                "stock": pick("s2", "stock", "shutdown"),
                "jobqueue": pick("s2", "jobqueue", "shutdown"),
                "floor": pick("floor_pair", "floor", "teardown"),
            },
        ),
        (
            "4b. shutdown, 500 workers: worker jobs gone [s]",
            {
                "ours": pick("s6", "ours", "workers_gone"),
                "floor": pick("floor_array_500", "floor", "array_cancel"),
            },
        ),
        (
            "4b. shutdown, 500 workers: queue empty [s]",
            {
                "ours": pick("s6", "ours", "shutdown"),
                "floor": pick("floor_pair", "floor", "teardown"),
            },
        ),
        (
            "5. gateway RPCs/min, 1 cluster x 10 idle",
            {"ours": s5["ours"][0], "stock": s5["stock"][0], "floor": 0.0},
        ),
        (
            "5. gateway RPCs/min, 10 clusters x 10 idle",
            {"ours": s5["ours"][1], "stock": s5["stock"][1], "floor": 0.0},
        ),
        (
            "5. growth 10x10 / 1x10 (1.0 = O(1))",
            {"ours": growth["ours"], "stock": growth["stock"]},
        ),
        (
            "6. list_clusters p50, idle [ms]",
            {"ours": pick("s6", "ours", "idle", "p50_ms")},
        ),
        (
            "6. list_clusters p50, during scale(500) [ms]",
            {"ours": pick("s6", "ours", "during", "p50_ms")},
        ),
        (
            "6. list_clusters p99, during scale(500) [ms]",
            {"ours": pick("s6", "ours", "during", "p99_ms")},
        ),
        (
            "6. list_clusters max, during scale(500) [ms]",
            {"ours": pick("s6", "ours", "during", "max_ms")},
        ),
    ]


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(ours, other) -> str:
    if not isinstance(ours, float | int) or not isinstance(other, float | int) or not other:
        return "-"
    return f"{ours / other:.2f}"


#: (row label prefix, system) pairs whose ratio would mislead: jobqueue has no scheduler job
#: (its scheduler runs in the client process), so it neither waits for one to start nor end.
NOT_COMPARABLE = {
    ("1. ", "jobqueue"),
    ("4. shutdown, 100 workers: queue empty", "jobqueue"),
}


def _comparable(label: str, system: str) -> bool:
    return not any(label.startswith(p) and system == s for p, s in NOT_COMPARABLE)


def table(results: dict) -> str:
    header = [
        "scenario",
        "ours",
        "stock",
        "jobqueue",
        "floor",
        "ours/stock",
        "ours/jq",
        "ours/floor",
    ]
    body = []
    for label, values in rows(results):
        ours = values.get("ours")
        body.append(
            [
                label,
                _fmt(ours),
                _fmt(values.get("stock")),
                _fmt(values.get("jobqueue")),
                _fmt(values.get("floor")),
                _ratio(ours, values.get("stock")),
                _ratio(ours, values.get("jobqueue")) if _comparable(label, "jobqueue") else "n/c",
                _ratio(ours, values.get("floor")) if not label.startswith("5.") else "-",
            ]
        )
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]

    def line(cells):
        return "  ".join(
            str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
            for i, c in enumerate(cells)
        )

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in body]
    out.append(
        "n/c: not comparable (jobqueue's scheduler runs in the client process: no scheduler "
        "job to start or to end)"
    )
    return "\n".join(out)


def details(results: dict) -> str:
    """Raw figures behind the table, one line each."""
    lines = []
    env = results["environment"]
    lines.append(
        f"date {env['date']}  host {env['host']}  cpus {env['cpus']}  {env['slurm']}  "
        f"commit {env['commit']}"
    )
    lines.append(f"ours installed: {env['ours_installed']}")
    lines.append(
        f"other users' jobs at start: {env['other_users_jobs_at_start']}, other "
        f"{SERVICE_ACCOUNT} gateway processes: {env['other_gateways_at_start']}; load average "
        f"start {tuple(round(x, 2) for x in env['loadavg_at_start'])} end "
        f"{tuple(round(x, 2) for x in env.get('loadavg_at_end', ()))}"
    )
    for system in ("ours", "stock", "jobqueue"):
        times = _get(results, "s1", system, "times")
        if times:
            lines.append(
                f"1. {system} new_cluster runs [s]: {', '.join(f'{t:.2f}' for t in times)}"
            )
    pair = _get(results, "floor_pair", "floor")
    if isinstance(pair, dict) and "pair" in pair:
        lines.append(
            f"floor: bare scheduler up {pair['scheduler_up']:.2f} s, scheduler + worker pair "
            f"connected {pair['pair']:.2f} s after sbatch; 16-task worker array connected "
            f"{pair['workers']:.2f} s after sbatch; scancel of the running scheduler, 17 "
            f"running and 100 held workers to empty queue {_fmt(pair.get('teardown'))} s"
        )
    for n, key in ((100, "floor_array"), (500, "floor_array_500")):
        arr = _get(results, key, "floor")
        if isinstance(arr, dict) and "separate" in arr and arr["separate"] is not None:
            lines.append(
                f"floor: scancel of the held {n}-task array to empty queue "
                f"{_fmt(arr['array_cancel'])} s"
            )
            lines.append(
                f"floor: {n} separate sbatch calls (one after the other) in squeue after "
                f"{arr['separate']:.2f} s, scancel of them to empty queue "
                f"{_fmt(arr['separate_cancel'])} s"
            )
    for system in ("ours", "stock", "jobqueue"):
        s2 = _get(results, "s2", system)
        if isinstance(s2, dict) and "scale_call" in s2:
            lines.append(
                f"2/4. {system}: scale() call returned after {s2['scale_call']:.2f} s; "
                f"shutdown call returned after {s2['shutdown_call']:.2f} s, worker jobs gone "
                f"after {_fmt(s2.get('workers_gone'))} s, queue empty after "
                f"{_fmt(s2['shutdown'])} s"
            )
    s6 = _get(results, "s6", "ours")
    if isinstance(s6, dict) and "idle" in s6:
        lines.append(
            f"2b/4b. ours scale(500): call returned after {s6['scale_call']:.2f} s, 500 jobs in "
            f"squeue after {_fmt(s6['scale'])} s; shutdown: worker jobs gone after "
            f"{_fmt(s6.get('workers_gone'))} s, queue empty after {_fmt(s6['shutdown'])} s"
        )
        d = s6["during"]
        if d.get("requests"):
            lines.append(
                f"6. the requests 'during' span {d['window_s']:.1f} s from the scale(500) call "
                f"(until 5 s after all 500 were queued); the slowest started "
                f"{d['slowest_started_at_s']:.2f} s after the call"
            )
        for phase in ("idle", "during"):
            x = s6[phase]
            if x.get("requests"):
                lines.append(
                    f"6. list_clusters {phase}: {x['requests']} requests, "
                    f"p50 {x['p50_ms']:.1f} ms, p99 {x['p99_ms']:.1f} ms, max {x['max_ms']:.1f} ms"
                )
    for system in ("ours", "stock"):
        s5 = _get(results, "s5", system)
        if not isinstance(s5, dict) or "error" in s5:
            continue
        for label, m in s5.items():
            calls = ", ".join(
                f"{c} {n:.1f}/min x {_fmt(m['rpcs_per_call'].get(c))} RPCs"
                for c, n in m["calls_per_min"].items()
                if n
            )
            lines.append(
                f"5. {system} {label} ({m['queued']} jobs queued, {m['window_s']:.0f} s): "
                f"{_fmt(m['gateway_per_min'])} RPCs/min = calls {calls or 'none'}; as {USER} "
                f"{_fmt(m['as_user_per_min'])}/min. sdiag, all users: "
                + ", ".join(f"{u} {c:.0f}" for u, c in sorted(m["sdiag_by_user_per_min"].items()))
            )
            if m["other_gateways"]:
                lines.append(
                    f"   (sdiag's {SERVICE_ACCOUNT} line also counts {len(m['other_gateways'])} "
                    f"other {SERVICE_ACCOUNT} processes that were running, e.g. "
                    f"{m['other_gateways'][0][:100]})"
                )
    for failure in results.get("_failures", []):
        lines.append(f"FAILED {failure.splitlines()[0][:400]}")
    return "\n".join(lines)


def print_report(results: dict, total: float) -> None:
    print()
    print(
        f"slurm-gateway benchmark, {results['environment']['date']} "
        f"(ratio = ours / other: below 1 means ours is faster or cheaper)"
    )
    print()
    print(table(results))
    print()
    print(details(results))
    print(f"total runtime {total:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of scenario 1 (median)")
    parser.add_argument("--rpc-window", type=float, default=60, help="seconds of sdiag counting")
    parser.add_argument("--settle", type=float, default=12, help="seconds before counting")
    parser.add_argument("--skip-stock-rpc", action="store_true", help="scenario 5 for ours only")
    parser.add_argument(
        "--only", help="comma-separated subset: floor,s1,s2,s3,s5,s6 (s2 includes 4 and 2b)"
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
    args = parser.parse_args()

    if args.table_from:
        results = json.loads(Path(args.table_from).read_text())
        print_report(results, results.get("total_runtime_s", 0.0))
        return 0

    if os.geteuid() != 0:
        print("run as root: it starts gateways as slurmgw and clients as carol", file=sys.stderr)
        return 2
    if run(["sinfo", "--noheader"]).returncode != 0:
        print("no SLURM cluster: run scripts/dev-cluster.sh up", file=sys.stderr)
        return 2
    for path in (OURS_SERVER, JOB_PYTHON):
        if not path.exists():
            print(f"{path} is missing: run scripts/build-envs.sh", file=sys.stderr)
            return 2

    root = Path(tempfile.mkdtemp(prefix="slurm-gateway-bench-"))
    try:
        ensure_user()
        ensure_bench_venv()
        install_sudoers()
        cancel_user_jobs(f"left over in {USER}'s queue before the benchmark")
        if args.wait_quiet and other_gateways(set()):
            log(f"waiting up to {args.wait_quiet:.0f} s for other {SERVICE_ACCOUNT} gateways")
            deadline = time.monotonic() + args.wait_quiet
            while other_gateways(set()) and time.monotonic() < deadline:
                time.sleep(5)
        results = benchmark(args, root)
    except BenchError as exc:
        print(f"benchmark aborted: {exc}", file=sys.stderr)
        return 1
    finally:
        cancel_user_jobs("final cleanup")
        remove_sudoers()
        if args.keep_workdir:
            log(f"work directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    total = time.monotonic() - STARTED
    results["total_runtime_s"] = total
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    print_report(results, total)
    print(f"{USER}'s queue empty at the end: {not user_jobs()}")
    return 1 if results.get("_failures") else 0


if __name__ == "__main__":
    sys.exit(main())
