"""The decisions of ``slurm-gateway check`` (:mod:`slurm_gateway.preflight`), as pure
functions: what the sudo rule may allow, what the log root must look like, what SLURM's
array limit means for the config, the check job's script and what its report says."""

from __future__ import annotations

import json
import math
import re
import stat
from dataclasses import dataclass

from .envcheck import PACKAGES, env_problem
from .rendering import sbatch_directive, shell_quote
from .user_logs import printable

#: Characters of a check's message printed (messages quote the check job's log).
MAX_MESSAGE_CHARS = 2000

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

#: The name of the check job (not the gateway's job names: a running gateway's orphan sweep
#: leaves it alone).
CHECK_JOB_NAME = "slurm-gateway-check"
#: What the check job prints before its JSON report.
REPORT_PREFIX = "slurm-gateway-check: "
#: The sudo rule's only problem when the service account may run nothing through sudo.
NO_RULE = "the service account may run nothing through sudo"


@dataclass(frozen=True)
class Outcome:
    """One check's verdict; ``message`` says what was found and, failing, what to fix."""

    name: str
    status: str
    message: str

    def line(self) -> str:
        # Messages quote what the test user's job printed (their log): no terminal escapes
        # reach root's terminal.
        return f"{self.status}  {self.name}: {printable(self.message, MAX_MESSAGE_CHARS)}"


def exit_code(outcomes: list[Outcome]) -> int:
    """1 when any check failed, else 0."""
    return 1 if any(o.status == FAIL for o in outcomes) else 0


# -- the sudo rule ----------------------------------------------------------------------------


def documented_commands(sbatch: str, scancel: str, helper: str) -> set[str]:
    """The commands of the documented rule (``deploy/sudoers``), with this config's paths."""
    ids = "( [0-9]+(_[0-9]+)?)+$"
    return {
        f"{sbatch} --parsable",
        f"{scancel} ^--{ids}",
        f"{scancel} ^--full --signal=TERM --{ids}",
        helper,
    }


_ENTRY = re.compile(r"^\((?P<runas>[^)]*)\)\s*(?P<rest>.*)$")
_TAG = re.compile(r"^(?:[A-Z_]+:\s*)+")


def sudo_entries(listing: str) -> list[tuple[str, list[str]]]:
    """``(runas, commands)`` of each entry of ``sudo -l`` output (its lines re-joined where
    sudo wrapped them), after the "may run the following commands" line."""
    _, found, rest = listing.partition("may run the following commands")
    if not found:
        return []
    entries: list[str] = []
    for line in rest.splitlines()[1:]:
        if line.startswith("    ") and not line.startswith("        "):
            entries.append(line.strip())
        elif line.startswith("        ") and entries:
            entries[-1] += " " + line.strip()
    parsed = []
    for entry in entries:
        match = _ENTRY.match(entry)
        if match is None:
            parsed.append(("?", [entry]))
            continue
        commands = _TAG.sub("", match["rest"].strip())
        parsed.append((match["runas"].strip(), [c.strip() for c in commands.split(", ")]))
    return parsed


def sudo_rule_problems(listing: str, documented: set[str]) -> list[str]:
    """What the service account's sudo privileges allow beyond the documented rule."""
    entries = sudo_entries(listing)
    if not entries:
        return [NO_RULE]
    problems = []
    for runas, commands in entries:
        targets = [t.strip() for t in runas.split(",")]
        if not runas or "ALL" in targets or "root" in targets or "!root" not in targets:
            problems.append(f"it may run commands as ({runas or 'root'}), not only as users")
        for command in commands:
            if command not in documented:
                problems.append(f"it may run {command!r}, which is not in the documented rule")
    return problems


# -- the log root -------------------------------------------------------------------------------


def log_root(template: str) -> tuple[str, bool]:
    """The directory above the per-user part of ``log_directory``, and whether the user's
    directory is directly in it (``/var/log/slurm-gateway/{username}``)."""
    parts = template.rstrip("/").split("/")
    index = next((i for i, p in enumerate(parts) if "{username}" in p), len(parts))
    return "/".join(parts[:index]) or "/", index == len(parts) - 1


def log_root_problem(path: str, mode: int, uid: int, users_create: bool) -> str | None:
    """Why the log root is not as the README's install makes it (root-owned, 1733), or None.
    Only root may own it; where users create their directories in it, everyone may create
    (but not list) entries and the sticky bit keeps them from removing each other's."""
    fix = f"chown root:root {path} && chmod 1733 {path}"
    if not stat.S_ISDIR(mode):
        return f"{path} is not a directory; create it: install -d -m 1733 {path}"
    if uid != 0:
        return f"{path} is owned by uid {uid}, who could redirect users' logs; {fix}"
    writable_by_others = mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable_by_others and not mode & stat.S_ISVTX:
        return (
            f"{path} has mode {stat.S_IMODE(mode):04o}: users could rename each other's log "
            f"directories (no sticky bit); {fix}"
        )
    if users_create and stat.S_IMODE(mode) != 0o1733:
        return (
            f"{path} has mode {stat.S_IMODE(mode):04o}, not 1733 (users create their own "
            f"directories in it without listing the others'); {fix}"
        )
    return None


# -- SLURM's array limit -----------------------------------------------------------------------


def array_size_outcome(slurm_max: int | None, use_arrays: bool, configured: int) -> Outcome:
    """``MaxArraySize`` against ``max_array_size`` (tasks must be below MaxArraySize)."""
    name = "MaxArraySize"
    if not use_arrays:
        return Outcome(name, PASS, "job arrays are off (use_job_arrays = False)")
    if slurm_max is None:
        return Outcome(name, FAIL, "scontrol show config shows no MaxArraySize; is it SLURM?")
    if slurm_max <= 1:
        return Outcome(
            name,
            FAIL,
            f"SLURM allows no job arrays (MaxArraySize={slurm_max}); set "
            "c.SlurmBackend.use_job_arrays = False",
        )
    limit = min(configured, slurm_max - 1)
    note = "" if limit == configured else f", capped by SLURM (max_array_size={configured})"
    return Outcome(
        name, PASS, f"arrays of at most {limit} workers (MaxArraySize={slurm_max}{note})"
    )


# -- the check job ------------------------------------------------------------------------------

# Run by the job environment's python on a compute node: the versions the gateway checks,
# whether dask really imports, and whether the proxy's address (the scheduler's way to the
# gateway) takes a TCP connection.
_JOB_PROBE = """
import json, socket, sys
from importlib.metadata import PackageNotFoundError, version
found = {"python": sys.version.split()[0], "host": socket.gethostname()}
for name in sys.argv[3:]:
    try:
        found[name] = version(name)
    except PackageNotFoundError:
        found[name] = None
try:
    import dask, distributed, dask_gateway
except Exception as exc:
    found["import_error"] = repr(exc)[:500]
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10).close()
except OSError as exc:
    found["proxy_error"] = repr(exc)[:500]
print("%s" + json.dumps(found), flush=True)
""".replace("%s", REPORT_PREFIX)


def check_job_script(config, output: str, conda_env: str, proxy: tuple[str, int]) -> str:
    """A scheduler-sized job of ``config`` (a cluster config) printing its report to
    ``output``."""
    partition = config.scheduler_partition or config.partition
    directives = [
        f"--job-name={CHECK_JOB_NAME}",
        f"--output={output}",
        "--chdir=/",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={config.scheduler_cores}",
        f"--mem={math.ceil(config.scheduler_memory / 2**20)}M",
        "--time=0:10:00",
    ]
    for option in ("account", "qos", "reservation"):
        if getattr(config, option):
            directives.append(f"--{option}={getattr(config, option)}")
    if partition:
        directives.append(f"--partition={partition}")
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH {sbatch_directive(d)}" for d in directives]
    lines += [f"#SBATCH {sbatch_directive(d)}" for d in config.extra_directives]
    lines += [f"#SBATCH {sbatch_directive(d)}" for d in config.scheduler_extra_directives]
    env = shell_quote(conda_env)
    host, port = shell_quote(proxy[0]), shell_quote(proxy[1])
    packages = " ".join(shell_quote(p) for p in PACKAGES)
    lines += [
        "umask 077",
        "cd /tmp || exit 70",
        f'exec {env}/bin/python -I - {host} {port} {packages} <<"SLURM_GATEWAY_CHECK"',
        _JOB_PROBE.strip(),
        "SLURM_GATEWAY_CHECK",
    ]
    return "\n".join(lines) + "\n"


def job_report(lines: list[str]) -> dict | None:
    """The check job's report, from the end of its output."""
    for line in reversed(lines):
        if line.startswith(REPORT_PREFIX):
            try:
                report = json.loads(line[len(REPORT_PREFIX) :])
            except ValueError:
                return None
            return report if isinstance(report, dict) else None
    return None


def job_outcomes(
    report: dict | None, lines: list[str], conda_env: str, version: str, proxy: str
) -> list[Outcome]:
    """The job environment's and the proxy's verdicts from the check job's report."""
    if report is None:
        said = " | ".join(lines[-5:])[:800] or "nothing"
        why = f"the check job printed no report (its output: {said}); is {conda_env} visible there?"
        return [Outcome("job environment", FAIL, why), Outcome("proxy from a node", SKIP, why)]
    where = f"on {report.get('host', '?')}"
    problem = env_problem(conda_env, report, version)
    if report.get("import_error") and not problem:
        problem = f"import dask fails in {conda_env}: {report['import_error']}"
    env = (
        Outcome("job environment", FAIL, f"{where}: {problem}")
        if problem
        else Outcome(
            "job environment",
            PASS,
            f"{where}: dask {report['dask']}, distributed {report['distributed']}, "
            f"dask-gateway {report['dask-gateway']} import in {conda_env}",
        )
    )
    if report.get("proxy_error"):
        reach = Outcome(
            "proxy from a node",
            FAIL,
            f"{where}: no TCP connection to the proxy at {proxy} ({report['proxy_error']}); "
            "schedulers reach the gateway there: start the proxy, set c.Proxy.address to an "
            "address compute nodes reach (or c.SlurmBackend.api_url), open the firewall",
        )
    else:
        reach = Outcome("proxy from a node", PASS, f"{where}: {proxy} takes connections")
    return [env, reach]
