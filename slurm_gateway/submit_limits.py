"""Submitting within SLURM's limits: what an sbatch refusal means, how many workers to try
next, and what the user is told about the workers the gateway holds back.

A worker request larger than SLURM takes at once is submitted in parts: arrays of at most
``MaxArraySize - 1`` tasks (the coalescer's batches), and, when SLURM refuses for a submit
limit (a QOS's or association's ``MaxSubmitJobs``), halved until a part fits. What does not
fit even as one job is held in the gateway and submitted as the user's jobs end, and every
``held_retry_period`` seconds. A limit shared with other users (:func:`is_shared_limit`: an
account's or a QOS's ``GrpSubmitJobs``, a QOS's ``MaxSubmitJobsPerAccount``) may be freed by
their jobs too, which the gateway does not tell apart: any job's end retries those workers
too, at most every :data:`SHARED_RETRY_GAP` seconds per user.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from .transport import readable

# sbatch names the limit on a line of its own, e.g. "sbatch: error: QOSMaxSubmitJobPerUserLimit".
_LIMIT_NAME = re.compile(r"\b(?:QOS|Assoc)\w*Limit\b")
# The generic refusal that follows it (SLURM 22.05).
_POLICY = "Job violates accounting/QOS policy"
# A job array larger than MaxArraySize.
_ARRAY_TOO_BIG = "Invalid job array specification"
#: Characters of SLURM's refusal kept as the reason workers are held (it is shown to users).
MAX_REASON_CHARS = 300
#: Seconds between retries of a user's workers held by a shared limit, on others' job ends.
SHARED_RETRY_GAP = 5.0
#: Seconds before a user's held workers are tried again when places were freed while they
#: were being tried (their jobs cancelled meanwhile).
RELEASE_AGAIN_GAP = 1.0


class Refusal(enum.Enum):
    """Why SLURM refused an sbatch."""

    SUBMIT_LIMIT = "submit limit"  # too many jobs of the user or account: fewer may fit
    ARRAY_TOO_BIG = "array too big"  # beyond MaxArraySize, or arrays not allowed: split it
    OTHER = "other"  # not a matter of how many: fewer would be refused too


def classify_refusal(stderr: str) -> Refusal:
    """What an sbatch refusal's message says. A named limit counts as a submit limit only
    if it limits submitted jobs (``...SubmitJob...``), not e.g. a job's wall time."""
    names = _LIMIT_NAME.findall(stderr)
    if names:
        return Refusal.SUBMIT_LIMIT if all("Submit" in n for n in names) else Refusal.OTHER
    if _POLICY in stderr and "job submit limit" in stderr:
        return Refusal.SUBMIT_LIMIT
    if _ARRAY_TOO_BIG in stderr:
        return Refusal.ARRAY_TOO_BIG
    return Refusal.OTHER


def limit_name(stderr: str) -> str:
    """The limit SLURM named (``QOSMaxSubmitJobPerUserLimit``), or a general description."""
    names = _LIMIT_NAME.findall(stderr)
    return names[0] if names else "job submit limit"


@dataclass
class SubmitPlan:
    """How many of ``remaining`` workers to submit next: all at first, half after each
    refusal, and after a success no more than what was last accepted. Done when none
    remain or a single worker was refused (the rest are then held)."""

    remaining: int
    size: int = 0

    def __post_init__(self):
        self.size = self.remaining

    @property
    def done(self) -> bool:
        return self.remaining == 0 or self.size == 0

    def next_size(self) -> int:
        return min(self.size, self.remaining)

    def accepted(self, count: int) -> None:
        self.remaining -= count
        self.size = count

    def refused(self) -> None:
        """The last size was refused: try half as many (none after a single worker)."""
        self.size = self.next_size() // 2


def is_shared_limit(limit: str) -> bool:
    """Whether a limit :func:`limit_name` named may count other users' jobs too: a group
    (``Grp``) or per-account limit, or one SLURM did not name; not a per-user one."""
    if limit == "job submit limit":
        return True
    names = _LIMIT_NAME.findall(limit)
    return bool(names) and all("Submit" in n and ("Grp" in n or "PerAccount" in n) for n in names)


def held_reason(refusal: str) -> str:
    """What is recorded (and shown to the user) as the reason workers are held: SLURM's
    words made :func:`~slurm_gateway.transport.readable` and bounded."""
    return readable(refusal, MAX_REASON_CHARS)


def pending_reason(held: int, limit: str) -> str:
    """What the user is told while ``held`` of their cluster's workers wait in the gateway."""
    workers = "1 worker waits" if held == 1 else f"{held} workers wait"
    when = "jobs under that shared limit end" if is_shared_limit(limit) else "your jobs end"
    return (
        f"{workers} in the gateway: SLURM refused more jobs ({held_reason(limit)}); "
        f"they are submitted as {when}"
    )


def is_held(state: dict) -> bool:
    """Whether a worker (by its recorded state) waits in the gateway, not in SLURM."""
    return bool(state.get("held")) and not state.get("job_id")
