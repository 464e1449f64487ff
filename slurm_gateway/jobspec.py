"""What a job script needs: walltimes, lifetimes, commands, environments and the template
context, as pure functions of the cluster's config and the gateway's settings.

The template context is the contract with admin templates (see ``templates/base.sh.j2``):
``role``, ``cluster_name``, ``job`` (the ``#SBATCH`` values), ``conda_env``,
``user_environment``, ``gateway_environment``, ``tls_cert``, ``tls_key``, ``command``,
``worker_names`` and ``worker_lifetimes`` (one per array task, indexed by
``SLURM_ARRAY_TASK_ID``), ``user_log_directory``, ``log_retention_days`` and ``scheduler_preload``
(the source of :mod:`slurm_gateway.scheduler_preload`, which the scheduler template writes
to :data:`PRELOAD_FILE` in the job's private directory).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dask_gateway_server.backends.db_base import Cluster, Worker
from jinja2 import Environment

from .rendering import render_job_script
from .slurm import format_walltime, walltime_seconds

#: Shortest walltime a worker job is given, in seconds.
MIN_WORKER_SECONDS = 60.0

#: Seconds a worker waits for a scheduler that went away before it exits.
WORKER_DEATH_TIMEOUT = 60

#: Where the scheduler job writes our preload, relative to its private working directory.
PRELOAD_FILE = "./slurm_gateway_preload.py"

#: How the built-in base template writes it: an admin's base template without this line
#: gets no ``--preload`` of it (dask would refuse to start without the file).
PRELOAD_WRITE = '> "$DASK_GATEWAY_CREDENTIALS/slurm_gateway_preload.py"'

#: dask-gateway's scheduler preload, before which ours must be imported.
GATEWAY_PRELOAD = "dask_gateway.scheduler_preload"

SCHEDULER_PRELOAD_SOURCE = (Path(__file__).parent / "scheduler_preload.py").read_text()


def user_log_directory(template: str, username: str) -> str:
    """The user's own log directory, from the ``log_directory`` setting."""
    return os.path.normpath(template.format(username=username))


def worker_seconds(
    walltime: str, worker_walltime: str, cluster_started: float, now: float
) -> float:
    """A worker's walltime in seconds: its own limit (the cluster's if none), cut to what
    is left of the cluster's life, and never under a minute."""
    cluster_left = walltime_seconds(walltime) - (now - cluster_started)
    wanted = walltime_seconds(worker_walltime or walltime)
    return max(MIN_WORKER_SECONDS, min(wanted, cluster_left))


#: The golden ratio's fractional part: the fractions of n·GOLDEN for any run of consecutive
#: n are spread evenly over [0, 1) (the three-gap theorem), however long the run.
GOLDEN = (5**0.5 - 1) / 2


def worker_lifetimes(seconds: float, margin: float, numbers: Sequence[int]) -> list[str]:
    """dask's ``--lifetime`` of each worker of a job or job array (``numbers``: the
    workers' numbers in the gateway, consecutive for workers created together): each leaves
    between one and two ``margin`` (at most a quarter of the walltime each) before the
    walltime, so that the work moves on to other workers, and they leave one after the
    other: worker ``n`` at ``margin * frac(n * GOLDEN)`` into that span. Any run of
    consecutive workers is spread evenly over it, whether they went out as one array or as
    single jobs one after another.

    Not dask's random ``--lifetime-stagger``: with that, two workers could leave seconds
    apart, and the second found no worker to take the results the first handed it (dask
    recomputed them). The latest leaver still has ``margin`` seconds before SLURM's
    walltime ends its job."""
    margin = min(margin, seconds / 4)
    return [f"{seconds - margin - margin * (n * GOLDEN % 1):.1f}s" for n in numbers]


def worker_command(
    base: Sequence[str],
    scheduler_address: str,
    *,
    host: str,
    nthreads: str,
    memory_limit: str,
    listen_host: str = "",
) -> list[str]:
    """The worker command without ``--name`` and ``--lifetime``, which the job script adds
    per array task (``worker_names``, ``worker_lifetimes``)."""
    command = [
        *base,
        scheduler_address,
        "--dashboard-address",
        f"{host}:0",
        "--nthreads",
        nthreads,
        "--memory-limit",
        memory_limit,
        # Exit when the scheduler is gone instead of waiting for the walltime.
        "--death-timeout",
        str(WORKER_DEATH_TIMEOUT),
    ]
    if listen_host:
        command += ["--host", listen_host]
    return command


def with_first_heartbeat(command: Sequence[str]) -> list[str]:
    """The scheduler command with our preload right before dask-gateway's (it defers the
    import of dask-gateway's client, then sends the first heartbeat through dask-gateway's
    service); unchanged if a site's command has no dask-gateway preload."""
    command = list(command)
    for n in range(len(command) - 1):
        if command[n] == "--preload" and command[n + 1] == GATEWAY_PRELOAD:
            return [*command[:n], "--preload", PRELOAD_FILE, *command[n:]]
    return command


def split_environment(
    gateway: Mapping[str, str], user: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """The gateway's variables and the user's, where the gateway's always win: a user's
    variable of the same name is dropped, and an equal one is left to the user's side."""
    gateway_only = {k: v for k, v in gateway.items() if k not in user or v != user[k]}
    user_only = {k: v for k, v in user.items() if k not in gateway_only}
    return gateway_only, user_only


def job_directives(
    config: Mapping,
    role: str,
    *,
    name: str,
    marker: str,
    log_directory: str,
    tasks: int,
    walltime: str,
) -> dict:
    """The ``#SBATCH`` values of a scheduler or worker job (the template's ``job``)."""
    worker = role == "worker"
    if worker:
        cpus, memory = config["worker_cores"], config["worker_memory"]
        partition = config["partition"]
    else:
        cpus, memory = config["scheduler_cores"], config["scheduler_memory"]
        partition = config["scheduler_partition"] or config["partition"]
    return {
        "name": name,
        "comment": marker,
        "log_directory": log_directory,
        "array": f"0-{tasks - 1}" if tasks > 1 else "",
        "cpus": cpus,
        "memory": f"{math.ceil(memory / 2**20)}M",
        "walltime": walltime,
        "partition": partition,
        "account": config["account"],
        "qos": config["qos"],
        "reservation": config["reservation"],
        "constraint": config["constraint"] if worker else "",
        "gres": config["gres"] if worker else "",
        "extra_directives": config["extra_directives"] + config[f"{role}_extra_directives"],
    }


def template_context(
    config: Mapping,
    role: str,
    *,
    cluster_name: str,
    username: str,
    job: dict,
    command: list[str],
    gateway_environment: Mapping[str, str],
    tls: tuple[str, str],
    worker_names: Sequence[str] = (),
    worker_lifetimes: Sequence[str] = (),
) -> dict:
    """Everything a job template sees (the contract in this module's docstring)."""
    gateway_only, user_only = split_environment(gateway_environment, config["environment"])
    return {
        "role": role,
        "cluster_name": cluster_name,
        "job": job,
        "conda_env": config["conda_env"],
        "user_environment": user_only,
        "gateway_environment": gateway_only,
        "tls_cert": tls[0],
        "tls_key": tls[1],
        "command": command,
        "worker_names": list(worker_names),
        # The caller's list itself, if it is one: JobScripts sees whether the template read it.
        "worker_lifetimes": (
            worker_lifetimes if isinstance(worker_lifetimes, list) else list(worker_lifetimes)
        ),
        "user_log_directory": user_log_directory(config["log_directory"], username),
        "log_retention_days": config["log_retention_days"],
        "scheduler_preload": SCHEDULER_PRELOAD_SOURCE if role == "scheduler" else "",
    }


class ReadOrNot(list):
    """A list that knows whether it was read (iterated or indexed), e.g. by a template."""

    read = False

    def __iter__(self):
        self.read = True
        return super().__iter__()

    def __getitem__(self, index):
        self.read = True
        return super().__getitem__(index)


@dataclass(frozen=True)
class JobScripts:
    """Renders a cluster's scheduler and worker job scripts from the templates and the
    gateway's settings. ``cluster`` is dask-gateway-server's cluster record."""

    templates: Environment
    job_name_prefix: str
    marker: str
    #: The address dask listens on (``--host``, dashboards): the backend's ``default_host``.
    host: str
    listen_host: str
    walltime_margin: float

    def scheduler(
        self,
        cluster: Cluster,
        log_directory: str,
        command: list[str],
        environment: Mapping[str, str],
    ) -> str:
        """The scheduler job's script."""
        walltime = cluster.config["walltime"]
        early = with_first_heartbeat(command)
        script = self._render(cluster, "scheduler", log_directory, early, walltime, environment)
        if PRELOAD_WRITE in script:
            return script
        return self._render(cluster, "scheduler", log_directory, command, walltime, environment)

    def workers(
        self,
        cluster: Cluster,
        log_directory: str,
        workers: Sequence[Worker],
        nthreads_memory: tuple[str, str],
        environment: Mapping[str, str],
        now: float,
    ) -> str:
        """The script of a job (one worker) or job array (one task per worker)."""
        config = cluster.config
        seconds = worker_seconds(
            config["walltime"], config["worker_walltime"], cluster.start_time / 1000, now
        )
        command = worker_command(
            config["worker_cmd"],
            cluster.scheduler_address,
            host=self.host,
            nthreads=nthreads_memory[0],
            memory_limit=nthreads_memory[1],
            listen_host=self.listen_host,
        )
        walltime = format_walltime(seconds)
        lifetimes = ReadOrNot(
            worker_lifetimes(seconds, self.walltime_margin, [w.id for w in workers])
        )
        script = self._render(
            cluster, "worker", log_directory, command, walltime, environment, workers, lifetimes
        )
        if lifetimes.read:
            return script
        # An admin's template that does not pass worker_lifetimes: every worker gets the
        # middle of the span in its command, with dask's random stagger, rather than none
        # (a worker without a lifetime is killed at the walltime with its data).
        margin = min(self.walltime_margin, seconds / 4)
        command += ["--lifetime", f"{seconds - 1.5 * margin:.0f}s"]
        command += ["--lifetime-stagger", f"{margin / 2:.0f}s"]
        return self._render(
            cluster, "worker", log_directory, command, walltime, environment, workers
        )

    def _render(
        self,
        cluster: Cluster,
        role: str,
        log_directory: str,
        command: list[str],
        walltime: str,
        environment: Mapping[str, str],
        workers: Sequence = (),
        lifetimes: Sequence[str] = (),
    ) -> str:
        job = job_directives(
            cluster.config,
            role,
            name=f"{self.job_name_prefix}-{role}",
            marker=self.marker,
            log_directory=log_directory,
            tasks=len(workers),
            walltime=walltime,
        )
        context = template_context(
            cluster.config,
            role,
            cluster_name=cluster.name,
            username=cluster.username,
            job=job,
            command=command,
            gateway_environment=environment,
            tls=(cluster.tls_cert.decode(), cluster.tls_key.decode()),
            worker_names=[w.name for w in workers],
            worker_lifetimes=lifetimes,
        )
        return render_job_script(self.templates, f"{role}.sh.j2", context)
