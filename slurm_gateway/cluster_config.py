"""Per-cluster configuration: resources, SLURM directives, environment, logs."""

from __future__ import annotations

import re

from dask_gateway_server.backends.base import ClusterConfig
from dask_gateway_server.traitlets import Command
from traitlets import Float, Integer, List, Unicode, default, validate

from .rendering import directive_value_problem

#: Workers of one cluster unless the admin sets ``cluster_max_workers``.
DEFAULT_MAX_WORKERS = 1000

# [minutes] | MM:SS | HH:MM:SS | D-HH | D-HH:MM | D-HH:MM:SS, as sbatch --time accepts.
_WALLTIME = re.compile(
    r"^(\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2})$"
)


def _directive(name: str, value: str) -> str:
    problem = directive_value_problem(value)
    if problem:
        raise ValueError(f"{name}: {problem}")
    return value


class SlurmClusterConfig(ClusterConfig):
    """Configuration of one Dask cluster run as SLURM jobs.

    Set site-wide in the config file (``c.SlurmClusterConfig.partition = "dask"``);
    the cluster options handler may override any of these per cluster.
    """

    scheduler_cmd = Command(
        ["python", "-m", "distributed.cli.dask_scheduler"],
        help="""Command that starts the scheduler, run inside the activated job environment.

        distributed >= 2026.8 no longer installs a ``dask-scheduler`` script, so the
        default runs the module with the environment's own python.""",
        config=True,
    )

    worker_cmd = Command(
        ["python", "-m", "distributed.cli.dask_worker"],
        help="Command that starts a worker, run inside the activated job environment.",
        config=True,
    )

    idle_timeout = Float(
        3600,
        min=0,
        help="Seconds an idle cluster (no client, no work) lives before shutdown; 0: never.",
        config=True,
    )

    conda_env = Unicode(
        "/opt/slurm-gateway/envs/default",
        help="""Job environment used when the user gives no ``conda_env``: the absolute path
        of a conda prefix (its activate.d scripts run) or of a venv. It must contain dask,
        distributed and dask-gateway matching the clients, and be readable on compute nodes.""",
        config=True,
    )

    walltime = Unicode(
        "1-00:00:00",
        help="""Longest life of a cluster, as SLURM ``--time`` (``D-HH:MM:SS``). The scheduler
        job gets this limit, so no cluster outlives it; workers get it too.""",
        config=True,
    )

    worker_walltime = Unicode(
        "",
        help="""Walltime of each worker job (empty: ``walltime``), never beyond what is left
        of the cluster's life. Workers leave gracefully before it and are replaced.""",
        config=True,
    )

    partition = Unicode(
        "", help="Partition of the worker jobs (empty: SLURM's default).", config=True
    )

    scheduler_partition = Unicode(
        "", help="Partition of the scheduler job (empty: same as ``partition``).", config=True
    )

    account = Unicode(
        "", help="``--account`` of all jobs (empty: the user's default).", config=True
    )

    qos = Unicode("", help="``--qos`` of all jobs (empty: none).", config=True)

    constraint = Unicode("", help="``--constraint`` of the worker jobs (empty: none).", config=True)

    reservation = Unicode("", help="``--reservation`` of all jobs (empty: none).", config=True)

    gres = Unicode(
        "", help="``--gres`` of the worker jobs, e.g. ``gpu:1`` (empty: none).", config=True
    )

    extra_directives = List(
        Unicode(),
        help="""More ``#SBATCH`` lines for all jobs, each a single option such as
        ``--exclusive`` or ``--mail-type=NONE``.""",
        config=True,
    )

    scheduler_extra_directives = List(
        Unicode(), help="More ``#SBATCH`` lines for the scheduler job only.", config=True
    )

    worker_extra_directives = List(
        Unicode(), help="More ``#SBATCH`` lines for worker jobs only.", config=True
    )

    log_directory = Unicode(
        "/var/log/slurm-gateway/{username}",
        help="""Per-user directory of job logs; ``{username}`` is replaced. Each cluster's
        logs go in a subdirectory named by its start time (``20261201-094500-1a2b3c4d``,
        with a file ``CLUSTER`` holding the cluster's name) and are kept after it stops.
        The gateway creates it as the user (mode 0700), and before every submission refuses
        one that anybody but the user or root could redirect: a symbolic link, another
        owner, group or other access, or a parent others can write without the sticky bit.
        Must be visible on compute nodes; the parent must let users create their own
        directory (e.g. root-owned, mode 1733).""",
        config=True,
    )

    log_retention_days = Integer(
        30,
        min=0,
        help="""Days a user's cluster logs are kept: each new scheduler job removes (as the
        user) cluster log directories older than this. 0: keep forever.""",
        config=True,
    )

    @default("cluster_max_workers")
    def _default_cluster_max_workers(self):
        # Finite by default (the stock default is no limit): scale(10**7) would otherwise
        # create ten million worker records.
        limit = self._worker_limit_from_resources()
        return DEFAULT_MAX_WORKERS if limit is None else min(limit, DEFAULT_MAX_WORKERS)

    @default("scheduler_partition")
    def _default_scheduler_partition(self):
        return self.partition

    @validate("walltime", "worker_walltime")
    def _validate_walltime(self, proposal):
        if proposal.value == "" and proposal.trait.name == "worker_walltime":
            return ""
        if not _WALLTIME.match(proposal.value):
            raise ValueError(
                f"{proposal.trait.name} must be a SLURM --time value such as 1-00:00:00, "
                f"got {proposal.value!r}"
            )
        return proposal.value

    @validate(
        "partition",
        "scheduler_partition",
        "account",
        "qos",
        "constraint",
        "reservation",
        "gres",
        "log_directory",
    )
    def _validate_directive(self, proposal):
        # log_directory goes on the --output line once {username} (a checked name) is set.
        _directive(proposal.trait.name, proposal.value.replace("{username}", "user"))
        return proposal.value

    @validate("extra_directives", "scheduler_extra_directives", "worker_extra_directives")
    def _validate_directives(self, proposal):
        return [_directive(proposal.trait.name, d) for d in proposal.value]
