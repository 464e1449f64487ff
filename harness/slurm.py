"""SLURM as root sees it: a user's queued and running jobs, cancelling them, and sacct."""

from __future__ import annotations

import time

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
