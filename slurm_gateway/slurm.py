"""SLURM command lines and output parsing, as pure functions.

Nothing here runs a process: the backend passes these argv lists to a
:class:`~slurm_gateway.transport.CommandRunner` and feeds the output back to the
parsers, so every parser is tested directly on real SLURM output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

# The states the gateway acts on by name (squeue's and sacct's spelling).
PENDING = "PENDING"
RUNNING = "RUNNING"
COMPLETING = "COMPLETING"
COMPLETED = "COMPLETED"
TIMEOUT = "TIMEOUT"

# States a job never leaves.
TERMINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)

# Ends that are the machine's fault, not the job's: such a worker is replaced without
# counting against the cluster's failure limit.
NOT_THE_JOBS_FAULT = frozenset({"BOOT_FAIL", "NODE_FAIL", "PREEMPTED"})

# Our own pseudo-states: submitted but not yet seen by a poll, and "SLURM could not tell us".
SUBMITTED = "SUBMITTED"
UNKNOWN = "UNKNOWN"

# The squeue poll prints only fields SLURM sets itself, each checked against the pattern of
# what SLURM prints there. A user can put any bytes (newlines, "|") into her job's name,
# comment, working directory or output path: none of those is printed, so no job can add
# or alter a row (``--name`` selects by job name without printing it).
_SQUEUE_FIELDS = {
    "job_id": r"\d+(_\d+)?",
    "state": r"[A-Z_]+",
    "reason": r"[^|\x00-\x1f\x7f]*",
    "nodes": r"[\w\[\],.-]*",
    "elapsed": r"[\d:-]*",
    "start_time": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d|N/A|Unknown",
    "user": r"[\w.-]+",
    "submit_time": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d|N/A|Unknown",
}
_SQUEUE_FORMAT = "%i|%T|%r|%N|%M|%S|%u|%V"
_SQUEUE_ROW = re.compile(
    "^" + r"\|".join(f"(?P<{name}>{pattern})" for name, pattern in _SQUEUE_FIELDS.items()) + "$"
)
_SACCT_FIELDS = ("job_id", "state", "exit_code", "nodes", "elapsed", "reason")
_SACCT_FORMAT = "JobID,State,ExitCode,NodeList,Elapsed,Reason"
_JOB_ID = re.compile(r"^\d+(_\d+)?$")  # a job, or one task of a job array
# Reasons sacct gives for ended jobs that only repeat the state or exit code.
_ECHOED_REASONS = frozenset({"", "None", "NonZeroExitCode", "OutOfMemory", "TimeLimit"})


@dataclass(frozen=True)
class JobInfo:
    """What SLURM last told us about one job."""

    job_id: str
    state: str = SUBMITTED
    reason: str = ""
    nodes: str = ""
    elapsed: str = ""
    exit_code: str = ""
    start_time: str = ""
    cancelled_by: str = ""
    #: True once the final state came from ``sacct`` (exit code known).
    accounted: bool = False
    #: When (``time.time()``) a poll first saw the job RUNNING.
    running_since: float | None = None
    user: str = ""
    submit_time: str = ""

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def is_active(self) -> bool:
        """Still queued or running, or not known to have ended (never "failed" by default)."""
        return not self.is_terminal

    @property
    def is_running(self) -> bool:
        return self.state == RUNNING

    @property
    def is_queued(self) -> bool:
        """Submitted and waiting: not yet started by SLURM."""
        return self.state in (PENDING, SUBMITTED)

    def merged(self, newer: JobInfo) -> JobInfo:
        """Combine with a newer report, keeping facts the newer one lacks."""
        fields = {k: v for k, v in newer.__dict__.items() if v not in ("", None)}
        return replace(self, **fields)


def sbatch_command(sbatch: str = "sbatch") -> list[str]:
    """Submit the job script given on standard input; print only the job id."""
    return [sbatch, "--parsable"]


def parse_sbatch_output(stdout: str) -> str:
    """The job id printed by ``sbatch --parsable`` (``"123"`` or ``"123;cluster"``)."""
    for line in stdout.splitlines():
        job_id = line.strip().split(";", 1)[0]
        if _JOB_ID.match(job_id):
            return job_id
    raise ValueError(f"sbatch printed no job id: {stdout.strip()!r}")


# What SLURM commands print when slurmctld cannot be reached (down, restarting, overloaded).
_UNREACHABLE = (
    "Unable to contact slurm controller",
    "Socket timed out",
    "Zero Bytes were transmitted or received",
    "Slurm temporarily unable",
    "Connection refused",
    "slurm_load_jobs error: Unable",
)


def slurm_unreachable(stderr: str) -> bool:
    """True if a command failed because slurmctld did not answer (worth retrying)."""
    return any(marker in stderr for marker in _UNREACHABLE)


def parse_sbatch_job_ids(stdout: str, tasks: int) -> list[str]:
    """The ids of the jobs one ``sbatch --parsable`` made: ``123`` or ``123_0 .. 123_N-1``."""
    job_id = parse_sbatch_output(stdout)
    return [job_id] if tasks == 1 else [f"{job_id}_{i}" for i in range(tasks)]


def parse_max_array_size(scontrol_config: str) -> int | None:
    """``MaxArraySize`` from ``scontrol show config`` (task indices must be below it)."""
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", scontrol_config, re.MULTILINE)
    return int(match.group(1)) if match else None


def scancel_command(job_ids: list[str], scancel: str = "scancel") -> list[str]:
    """Cancel jobs outright: running job scripts are killed without running their traps."""
    return [scancel, "--", *job_ids]


def terminate_command(job_ids: list[str], scancel: str = "scancel") -> list[str]:
    """Send SIGTERM to every process of running jobs, the job script included (``--full``),
    so that dask closes cleanly and the script's exit trap removes its TLS files. SLURM
    refuses to signal pending jobs: cancel those with :func:`scancel_command`."""
    return [scancel, "--full", "--signal=TERM", "--", *job_ids]


def squeue_command(job_ids: list[str], squeue: str = "squeue") -> list[str]:
    """One call listing the given jobs, in all states; an array task is asked for by its
    array's id, and ``--array`` lists each task on its own line (``123_4``), pending ones
    included, instead of grouping them as ``123_[4-99]``.

    Only the gateway's own jobs are asked for, so no job of anyone else's can make the
    answer larger. squeue fails when asked for one job it no longer knows (purged after
    ``MinJobAge``) but silently leaves out unknown ones among several, so a single id is
    given twice.
    """
    ids = sorted({job_id.split("_")[0] for job_id in job_ids}, key=int)
    if len(ids) == 1:
        ids *= 2
    return [
        squeue,
        "--noheader",
        "--array",
        "--states=all",
        "--jobs=" + ",".join(ids),
        "--format=" + _SQUEUE_FORMAT,
    ]


def named_jobs_command(job_names: list[str], users: list[str], squeue: str = "squeue") -> list[str]:
    """The jobs of ``users`` that carry one of our job names (any user can name a job so):
    where the orphan sweep looks for jobs the gateway submitted but did not record."""
    return [
        squeue,
        "--noheader",
        "--array",
        "--states=all",
        "--name=" + ",".join(job_names),
        "--users=" + ",".join(users),
        "--format=" + _SQUEUE_FORMAT,
    ]


def parse_squeue(stdout: str) -> dict[str, JobInfo]:
    """Parse :func:`squeue_command` (or :func:`named_jobs_command`) output into
    ``{job_id: JobInfo}``; a line that is not
    exactly a row of SLURM-set fields is ignored."""
    jobs = {}
    for line in stdout.splitlines():
        match = _SQUEUE_ROW.match(line.strip())
        if match is None:
            continue
        row = match.groupdict()
        jobs[row["job_id"]] = JobInfo(
            job_id=row["job_id"],
            state=row["state"],
            reason="" if row["reason"] == "None" else row["reason"],
            nodes=row["nodes"],
            elapsed=row["elapsed"],
            start_time="" if row["start_time"] in ("N/A", "Unknown") else row["start_time"],
            user=row["user"],
            submit_time=row["submit_time"],
        )
    return jobs


def job_marker_command(job_id: str, job_names: list[str], squeue: str = "squeue") -> list[str]:
    """Owner and ``--comment`` of one job, if it carries one of our job names."""
    return [
        squeue,
        "--noheader",
        "--array",
        "--states=all",
        "--jobs=" + job_id,
        "--name=" + ",".join(job_names),
        "--format=%i|%u|%k",
    ]


def confirms_marker(stdout: str, job_id: str, user: str, marker: str) -> bool:
    """True if :func:`job_marker_command` says that ``job_id`` is ``user``'s and that its
    comment is exactly ``marker``. The whole output must be that one line: a comment with
    a newline or anything else added can only make this False."""
    return stdout.rstrip("\n") == f"{job_id}|{user}|{marker}"


def sacct_command(job_ids: list[str], sacct: str = "sacct") -> list[str]:
    """Final states of jobs that have left the queue (allocation lines only)."""
    return [
        sacct,
        "--noheader",
        "--parsable2",
        "--allocations",
        "--jobs=" + ",".join(job_ids),
        "--format=" + _SACCT_FORMAT,
    ]


def parse_sacct(stdout: str) -> dict[str, JobInfo]:
    """Parse :func:`sacct_command` output; ``CANCELLED by 1001`` sets ``cancelled_by``."""
    jobs = {}
    for line in stdout.splitlines():
        parts = line.split("|")
        if len(parts) < len(_SACCT_FIELDS):
            continue
        row = dict(zip(_SACCT_FIELDS, (p.strip() for p in parts), strict=False))
        if not _JOB_ID.match(row["job_id"]):
            continue
        state, _, by = row["state"].partition(" by ")
        jobs[row["job_id"]] = JobInfo(
            job_id=row["job_id"],
            state=state,
            exit_code=row["exit_code"],
            nodes="" if row["nodes"] in ("None assigned", "None") else row["nodes"],
            elapsed=row["elapsed"],
            reason="" if row["reason"] == "None" else row["reason"],
            cancelled_by=by,
            accounted=state in TERMINAL_STATES,
        )
    return jobs


def describe_job(role: str, info: JobInfo) -> str:
    """One line of SLURM facts, e.g. ``scheduler job 42 OUT_OF_MEMORY (exit 0:125) on n1``."""
    text = f"{role} job {info.job_id} {info.state}"
    if info.state == PENDING:
        text += f" (reason: {info.reason or 'None'}"
        text += f", expected start: {info.start_time})" if info.start_time else ")"
    else:
        if info.cancelled_by:
            text += f" by uid {info.cancelled_by}"
        if info.exit_code and info.is_terminal:
            text += f" (exit {info.exit_code})"
        if info.is_terminal and info.reason not in _ECHOED_REASONS:
            text += f" (reason: {info.reason})"
        if info.nodes:
            text += f" on {info.nodes}"
        if info.elapsed:
            text += f" after {info.elapsed}"
    return text


def format_walltime(seconds: float) -> str:
    """``--time`` value for a number of seconds, rounded up to whole minutes (``D-HH:MM:SS``)."""
    minutes = max(1, -(-int(seconds) // 60))
    days, rest = divmod(minutes * 60, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}-{hours:02d}:{rest // 60:02d}:00"


def walltime_seconds(walltime: str) -> int:
    """Seconds in a SLURM ``--time`` value (``"90"`` is 90 minutes, ``"1-00:00:00"`` a day)."""
    days, _, clock = walltime.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:
        hours, minutes, seconds = 0, parts[0], parts[1]
    else:
        hours, minutes, seconds = parts
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds
