"""SLURM as root sees it: a user's queued and running jobs, cancelling them, and sacct."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from harness.processes import HarnessError, run, wait_until


def user_jobs(*users: str) -> list[str]:
    """Lines of squeue (``id user name state``) for the users' jobs still queued or running."""
    out = run(["squeue", "--noheader", "--user=" + ",".join(users), "--format=%i %u %j %T"])
    if out.returncode != 0:
        raise HarnessError(f"squeue failed: {out.stderr.strip()}")
    return [line for line in out.stdout.splitlines() if line.strip()]


def cancel_user_jobs(user: str, timeout: float = 60) -> list[str]:
    """Cancel all of ``user``'s jobs and wait (up to ``timeout`` seconds) until they have left
    the queue; return the jobs there were (as :func:`user_jobs` lists them)."""
    jobs = user_jobs(user)
    if jobs:
        run(["scancel", f"--user={user}"])
        wait_until(lambda: not user_jobs(user), timeout, interval=1)
    return jobs


def slurm_now() -> str:
    """Now, as SLURM writes times (local time, to the second)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def submitted_since(user: str, since: str) -> list[str]:
    """Jobs the user submitted at or after ``since`` (a :func:`slurm_now`), per sacct.

    Selected by submit time, as records of earlier jobs may reach sacct late."""
    out = run(["sacct", "-n", "-X", "-P", "-u", user, "-S", since, "-o", "JobID,Submit"])
    if out.returncode != 0:
        raise HarnessError(f"sacct failed: {out.stderr.strip()}")
    rows = [line.split("|") for line in out.stdout.splitlines() if line]
    return [job_id for job_id, submitted in rows if submitted >= since]


@contextmanager
def submit_limit(user: str, limit: int, qos: str = "gwtest") -> Iterator[None]:
    """While inside: ``user``'s jobs run in a QOS of at most ``limit`` submitted jobs (array
    tasks count one by one). Needs AccountingStorageEnforce=...qos (scripts/dev-cluster.sh).
    sacctmgr's changes reach slurmctld later: this waits until an array of ``limit + 1``
    held jobs is refused. The QOS is removed at the end."""

    def sacctmgr(*args: str, check: bool = True) -> None:
        out = run(["sacctmgr", "-i", *args])
        if check and out.returncode != 0:
            raise HarnessError(f"sacctmgr {' '.join(args)}: {out.stdout}{out.stderr}")

    def applied() -> bool:
        probe = [
            "sbatch",
            "--hold",
            "-p",
            "workers",
            "-o",
            "/dev/null",
            f"--array=0-{limit}",
            "--wrap",
            "true",
        ]
        out = run(["runuser", "-u", user, "--", *probe], cwd="/tmp")
        if out.returncode == 0:
            run(["scancel", out.stdout.split()[-1]])
        return "SubmitJob" in out.stderr

    try:
        sacctmgr("add", "qos", qos, check=False)  # (left over if a run was cut short)
        sacctmgr("modify", "qos", qos, "set", f"MaxSubmitJobsPerUser={limit}")
        sacctmgr("modify", "user", user, "set", f"qos+={qos}", f"defaultqos={qos}")
        if not wait_until(applied, 30):
            raise HarnessError(f"slurmctld does not apply QOS {qos} to {user} after 30 s")
        yield
    finally:
        sacctmgr("modify", "user", user, "set", f"qos-={qos}", "defaultqos=normal", check=False)
        sacctmgr("delete", "qos", qos, check=False)
