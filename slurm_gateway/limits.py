"""Per-user limits: how much of the site one user's clusters may hold at once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from dask_gateway_server.utils import format_bytes


class LimitExceeded(ValueError):
    """A per-user limit refuses a new cluster; ``limit`` is the setting's name."""

    def __init__(self, limit: str, message: str):
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class UserLimits:
    """0 means no limit."""

    max_clusters: int = 0
    max_cores: float = 0
    max_memory: int = 0  # bytes
    max_workers: int = 0


def _usage(config: Mapping, workers: int) -> tuple[float, int]:
    cores = config["scheduler_cores"] + workers * config["worker_cores"]
    memory = config["scheduler_memory"] + workers * config["worker_memory"]
    return cores, memory


def admit(
    limits: UserLimits, active: Iterable[tuple[Mapping, int]], new_config: Mapping
) -> int | None:
    """Check a new cluster against a user's limits, given their active clusters as
    ``(config, worker count)`` pairs.

    Returns the most workers the new cluster may have within the limits (None: no limit),
    or raises :class:`LimitExceeded` (a ``ValueError``) naming the limit that refuses it.
    """
    active = list(active)
    if limits.max_clusters and len(active) >= limits.max_clusters:
        raise LimitExceeded(
            "max_clusters_per_user",
            f"you already have {len(active)} active cluster(s), the limit per user is "
            f"{limits.max_clusters}; shut one down (gateway.list_clusters() lists them)",
        )
    used_cores = sum(_usage(config, count)[0] for config, count in active)
    used_memory = sum(_usage(config, count)[1] for config, count in active)
    cores, memory = _usage(new_config, 0)
    most = None
    if limits.max_cores:
        left = limits.max_cores - used_cores - cores
        if left < 0:
            raise LimitExceeded(
                "max_cores_per_user",
                f"your clusters use {used_cores:g} cores; a new scheduler needs {cores:g} more "
                f"and the limit per user is {limits.max_cores:g} cores; scale down or shut down "
                f"a cluster",
            )
        most = int(left // new_config["worker_cores"])
    if limits.max_memory:
        left = limits.max_memory - used_memory - memory
        if left < 0:
            raise LimitExceeded(
                "max_memory_per_user",
                f"your clusters use {format_bytes(used_memory)}; a new scheduler needs "
                f"{format_bytes(memory)} more and the limit per user is "
                f"{format_bytes(limits.max_memory)}; scale down or shut down a cluster",
            )
        by_memory = int(left // new_config["worker_memory"])
        most = by_memory if most is None else min(most, by_memory)
    if limits.max_workers:
        left = max(0, limits.max_workers - sum(count for _, count in active))
        most = left if most is None else min(most, left)
    return most


def workers_allowed(
    limits: UserLimits, others: Iterable[tuple[Mapping, int]], config: Mapping
) -> int | None:
    """The most workers a running cluster may have now, given the user's other active
    clusters as ``(config, worker count)`` pairs (None: no limit). Checked whenever the
    cluster asks for workers, so that ``scale()`` and ``adapt()`` stay within the limits."""
    try:
        return admit(replace(limits, max_clusters=0), others, config)
    except ValueError:
        return 0
