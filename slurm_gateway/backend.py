"""The SLURM backend: wires options, rendering, submission and job tracking into dask-gateway."""

from __future__ import annotations

import asyncio
import math
import os
import pwd
import secrets
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

from aiohttp import web
from cryptography.fernet import Fernet
from dask_gateway_server import __version__ as dask_gateway_server_version
from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.backends.db_base import DBBackendBase, JobStatus, Worker
from dask_gateway_server.backends.db_base import workers as workers_table
from dask_gateway_server.models import ClusterStatus
from dask_gateway_server.traitlets import MemoryLimit, Type
from dask_gateway_server.utils import timestamp
from traitlets import Bool, Float, Integer, List, Unicode, default

from .as_user import AsUser, UserError, one_line
from .batching import Coalescer
from .identity import UserPolicy, user_problem
from .limits import UserLimits, admit, workers_allowed
from .options import (
    DEFAULT_ENVIRONMENT_DENY,
    check_conda_env,
    default_options,
    filter_environment,
    request_body_problem,
)
from .rendering import render_job_script, template_environment
from .slurm import (
    NOT_THE_JOBS_FAULT,
    UNKNOWN,
    JobInfo,
    confirms_marker,
    describe_job,
    format_walltime,
    job_marker_command,
    named_jobs_command,
    parse_max_array_size,
    parse_sbatch_job_ids,
    parse_squeue,
    sbatch_command,
    scancel_command,
    slurm_unreachable,
    terminate_command,
    walltime_seconds,
)
from .state import ensure_private_directory, read_or_create_secret
from .tracker import JobTracker
from .userfs import directory_problem

# Worker records created in one database transaction (then a yield to the event loop)
# when a cluster scales up.
WORKERS_PER_TRANSACTION = 100

# Jobs checked one by one in SLURM per orphan sweep (the rest wait for the next sweep).
MAX_ORPHAN_CHECKS = 50

# Seconds the gateway waits at start for SLURM to say which jobs ended while it was down.
RECONCILE_AT_START_TIMEOUT = 30.0


class SlurmError(Exception):
    """A SLURM command failed; the message carries what SLURM said."""


class SlurmBackend(DBBackendBase):
    """Run each Dask cluster as SLURM jobs (one scheduler job, one job per worker)
    submitted as the cluster's user through ``sudo``."""

    # Workers are cancelled together with the scheduler in one scancel.
    supports_bulk_shutdown = True

    cluster_config_class = Type(
        "slurm_gateway.config.SlurmClusterConfig",
        klass="dask_gateway_server.backends.base.ClusterConfig",
        help="The cluster config class to use.",
        config=True,
    )

    @default("cluster_options")
    def _default_cluster_options(self):
        return default_options()

    runner_class = Type(
        "slurm_gateway.transport.LocalSudoRunner",
        klass="slurm_gateway.transport.CommandRunner",
        help="How SLURM commands are run as users: local sudo (default) or a custom transport.",
        config=True,
    )

    template_path = Unicode(
        "",
        help="""Directory of admin job templates. A ``scheduler.sh.j2``, ``worker.sh.j2`` or
        ``base.sh.j2`` found here replaces the built-in one of that name.""",
        config=True,
    )

    sbatch = Unicode("/usr/bin/sbatch", help="Path to sbatch (run as the user).", config=True)
    scancel = Unicode("/usr/bin/scancel", help="Path to scancel (run as the user).", config=True)
    squeue = Unicode("/usr/bin/squeue", help="Path to squeue (run as the gateway).", config=True)
    sacct = Unicode("/usr/bin/sacct", help="Path to sacct (run as the gateway).", config=True)
    scontrol = Unicode(
        "/usr/bin/scontrol", help="Path to scontrol (run as the gateway).", config=True
    )

    job_name_prefix = Unicode(
        "dask-gateway",
        help="""Jobs are named ``<prefix>-scheduler`` and ``<prefix>-worker``; the gateway
        finds its jobs in squeue by these names.""",
        config=True,
    )

    orphan_check_period = Float(
        60,
        min=1,
        help="""Seconds between checks for orphan jobs: jobs bearing this gateway's marker
        that no active cluster owns (e.g. submitted just before a crash). They are cancelled.""",
        config=True,
    )

    cancel_grace_period = Float(
        10,
        min=0,
        help="""Seconds a running job has to end after SIGTERM (dask closing, the job script
        removing its TLS files from the node) before it is cancelled outright.""",
        config=True,
    )

    orphan_min_age = Float(
        60,
        min=0,
        help="Seconds a job must have existed before it can be judged an orphan.",
        config=True,
    )

    slurm_poll_period = Float(
        10,
        min=0.5,
        help="Seconds between polls of SLURM. Each poll is one squeue call for all jobs.",
        config=True,
    )

    listen_host = Unicode(
        "",
        help="""Address the scheduler and workers listen on and advertise. Empty: all
        interfaces (the node's own address is advertised). Set 127.0.0.1 when every
        compute node is this host, as in the dev cluster.""",
        config=True,
    )

    environment_deny = List(
        Unicode(),
        list(DEFAULT_ENVIRONMENT_DENY),
        help="""Names (shell patterns) never forwarded from a user's ``env``: they are dropped
        quietly so that ``env=dict(os.environ)`` works. Extend rather than replace.""",
        config=True,
    )

    user_helper = Unicode(
        help="""Path of ``slurm-gateway-user-helper``, run as the user through sudo to create
        the user's log directories, check a ``conda_env`` and read the end of a job log.
        Default: the one installed beside the gateway.""",
        config=True,
    )

    @default("user_helper")
    def _default_user_helper(self):
        return os.path.join(sys.prefix, "bin", "slurm-gateway-user-helper")

    env_check_timeout = Float(
        30,
        min=1,
        help="""Seconds a ``conda_env``'s python has to report its packages; then it is
        killed with everything it started, and the cluster is refused.""",
        config=True,
    )

    max_log_bytes = Integer(
        65536,
        min=1024,
        help="Bytes read from the end of a failed job's log to quote its last line.",
        config=True,
    )

    min_user_uid = Integer(
        1000,
        min=1,
        help="""Users with a smaller uid (system accounts) cannot start clusters. Root and the
        gateway's own service account never can.""",
        config=True,
    )

    max_user_uid = Integer(
        60000,
        min=1,
        help="""Users with a larger uid cannot start clusters: on Debian, ``nobody`` and the
        accounts of daemons (``slurm``, ``munge``) are above 60000 (``UID_MAX``).""",
        config=True,
    )

    allowed_group = Unicode(
        "",
        help="""If set, only members of this Unix group may start clusters (use the group of
        the sudo rule, e.g. ``dask-users``); others are refused (422, saying why) before
        anything runs as them.""",
        config=True,
    )

    max_concurrent_starts_per_user = Integer(
        2,
        min=1,
        help="""Most ``new_cluster`` requests of one user checked at once (each runs her
        environment's python); more get 429 at once, so that one user cannot tie up the
        gateway's processes for everyone.""",
        config=True,
    )

    check_environments = Bool(
        True,
        help="""Check, as the user and before submitting, that the cluster's ``conda_env``
        exists and holds dask, distributed and dask-gateway matching this gateway.""",
        config=True,
    )

    queue_aware_start = Bool(
        False,
        help="""If True, ``cluster_start_timeout`` counts from when the scheduler job starts
        RUNNING, and a scheduler may wait in the queue for ``scheduler_queue_timeout``.
        If False (default), it counts from the cluster's creation, queue wait included.""",
        config=True,
    )

    scheduler_queue_timeout = Float(
        3600,
        help="Seconds a scheduler job may wait in the queue when ``queue_aware_start`` is on.",
        config=True,
    )

    worker_walltime_margin = Float(
        300,
        help="""Workers leave gracefully this many seconds (at most a quarter of their
        walltime) before their job's walltime, so that their data moves to other workers;
        the gateway starts a replacement while the cluster has time left.""",
        config=True,
    )

    slurm_retry_timeout = Float(
        90,
        min=0,
        help="""Seconds to keep retrying a submission while slurmctld does not answer
        (restart, outage) before reporting "SLURM unavailable". Cancellations are retried
        until they succeed.""",
        config=True,
    )

    max_clusters_per_user = Integer(
        0, min=0, help="Most active clusters one user may have at once (0: no limit).", config=True
    )

    max_cores_per_user = Float(
        0,
        min=0,
        help="""Most cores one user's clusters may hold together, schedulers included
        (0: no limit). A new cluster's ``cluster_max_workers`` is cut to what is left.""",
        config=True,
    )

    max_memory_per_user = MemoryLimit(
        0,
        help="""Most memory one user's clusters may hold together, e.g. ``"256 G"``
        (0: no limit). A new cluster's ``cluster_max_workers`` is cut to what is left.""",
        config=True,
    )

    max_workers_per_user = Integer(
        2000,
        min=0,
        help="""Most workers one user's clusters may have together (0: no limit). A
        cluster asking for more (``scale``, ``adapt``) gets what is left.""",
        config=True,
    )

    use_job_arrays = Bool(
        True,
        help="""Submit workers requested together (``scale(n)``, adaptive growth) as one job
        array per cluster, one task per worker. If False, or where SLURM refuses arrays,
        each worker is its own job.""",
        config=True,
    )

    max_array_size = Integer(
        1000,
        min=1,
        help="Most workers in one job array (also capped by SLURM's MaxArraySize).",
        config=True,
    )

    batch_window = Float(
        0.02,
        min=0,
        help="""Seconds to gather worker submissions (or cancellations) that arrive together
        into one sbatch (or scancel) call.""",
        config=True,
    )

    state_directory = Unicode(
        "/var/lib/slurm-gateway",
        help="Directory of the gateway's database and encryption keys (mode 0700).",
        config=True,
    )

    @default("db_url")
    def _default_db_url(self):
        return f"sqlite:///{self.state_directory}/slurm-gateway.sqlite"

    @default("db_encrypt_keys")
    def _default_db_encrypt_keys(self):
        # The stock default reads DASK_GATEWAY_ENCRYPT_KEYS only; we also keep a key file
        # next to the persistent database, created on first start with mode 0600.
        if os.environ.get("DASK_GATEWAY_ENCRYPT_KEYS"):
            return super()._db_encrypt_keys_default()
        return [
            read_or_create_secret(Path(self.state_directory) / "encrypt-keys", Fernet.generate_key)
        ]

    @default("stop_clusters_on_shutdown")
    def _default_stop_clusters_on_shutdown(self):
        return False  # clusters outlive a gateway restart; the database remembers them

    @default("cluster_start_timeout")
    def _default_cluster_start_timeout(self):
        return 120.0

    @default("parallelism")
    def _default_parallelism(self):
        # Reconcilers are coroutines; many of them let a scale(500) reach the submission
        # batcher at once and leave as one job array, instead of 20 at a time.
        return 1000

    @default("worker_start_timeout")
    def _default_worker_start_timeout(self):
        return 120.0  # counted from when the worker's job starts RUNNING, see _check_timeouts

    @default("check_timeouts_period")
    def _default_check_timeouts_period(self):
        # The base class checks every min(20 s, shortest timeout / 2); time-outs are
        # reported with how long was waited, so check often enough for that to be close.
        return min(5.0, self.cluster_start_timeout / 4, self.cluster_heartbeat_timeout / 4)

    @default("cluster_status_period")
    def _default_cluster_status_period(self):
        return self.slurm_poll_period

    @default("worker_status_period")
    def _default_worker_status_period(self):
        return self.slurm_poll_period

    # The base class passes this to dask for --host and the dashboard/api addresses.
    @property
    def default_host(self):
        return self.listen_host or "0.0.0.0"

    # -- setup ---------------------------------------------------------------------------

    async def setup(self, app):
        # Before the stock setup opens (and maybe creates) the database in it.
        ensure_private_directory(Path(self.state_directory))
        # Answer a client's wait for a failed cluster with 409 and our reason: the stock
        # client then raises it verbatim instead of "failed to start, see logs".
        app.middlewares.append(self._failure_reason_middleware)
        # The stock routes answer a body that is not JSON with 500, and pass some bad
        # scale/adapt values on to the scheduler; adapt with minimum > maximum even makes the
        # scheduler fail and the gateway stop the cluster.
        app.middlewares.append(_request_body_middleware)
        await super().setup(app)

    async def do_setup(self):
        # The site's cluster settings are checked now, not at the first user's request.
        self.cluster_config_class(parent=self)
        self.runner = self.runner_class(parent=self, log=self.log)
        self.as_user = AsUser(self.runner, self.user_helper, max_log_bytes=self.max_log_bytes)
        self.user_policy = UserPolicy(
            min_uid=self.min_user_uid, max_uid=self.max_user_uid, allowed_group=self.allowed_group
        )
        # Per user: the configs of new clusters not yet created (they count against her
        # limits meanwhile), and how many of them are being checked as her.
        self._reserved: dict[str, dict[object, dict]] = {}
        self._checking: dict[str, int] = {}
        self.templates = template_environment([self.template_path])
        self._job_names = [f"{self.job_name_prefix}-scheduler", f"{self.job_name_prefix}-worker"]
        self.tracker = JobTracker(
            self.runner.run,
            squeue=self.squeue,
            sacct=self.sacct,
            log=self.log,
        )
        self._worker_submissions = Coalescer(
            self._submit_workers,
            unclaimed=self._cancel_unclaimed,
            window=self.batch_window,
            max_batch=self.max_array_size if self.use_job_arrays else 1,
        )
        self._cancellations = Coalescer(self._cancel_batch, window=self.batch_window)
        # job id -> (cluster name, worker name or None for the scheduler)
        self._job_owners: dict[str, tuple[str, str | None]] = {}
        # Jobs sent SIGTERM and given their grace period before being cancelled.
        self._stopping: set[str] = set()
        # Jobs named like ours that SLURM said are not ours (another user's or gateway's).
        self._not_ours: set[str] = set()
        for cluster in self.db.active_clusters():
            self._track(cluster.state.get("job_id"), cluster)
            for worker in cluster.workers.values():
                if worker.status < JobStatus.STOPPED:
                    self._track(worker.state.get("job_id"), cluster, worker)
        self.task_pool.spawn(self._poll_loop())
        self.task_pool.spawn(self._orphan_loop())
        # Everything above is set before the first await: reconcilers may already be running.
        if self.use_job_arrays:
            self._worker_submissions.max_batch = await self._array_limit()
        await self._reconcile_with_slurm()

    async def _reconcile_with_slurm(self):
        """Jobs may have ended while the gateway was down: learn their fate before the API
        serves anyone, so nobody connects to a cluster whose scheduler is gone. Bounded, as
        SLURM itself may be down; the poll loop then catches up."""
        if not self._job_owners:
            return
        try:
            await asyncio.wait_for(self._poll_slurm(), RECONCILE_AT_START_TIMEOUT)
        except Exception as exc:
            self.log.warning("Could not check the clusters' jobs in SLURM at start: %r", exc)

    async def _array_limit(self) -> int:
        result = await self.runner.run([self.scontrol, "show", "config"])
        slurm_max = parse_max_array_size(result.stdout) if result.ok else None
        if slurm_max is None:
            self.log.warning(
                "Could not read MaxArraySize from SLURM; arrays of at most %d", self.max_array_size
            )
            return self.max_array_size
        return max(1, min(self.max_array_size, slurm_max - 1))

    def _track(self, job_id: str | None, cluster, worker=None):
        if job_id:
            self.tracker.track(job_id)
            self._job_owners[job_id] = (cluster.name, worker.name if worker else None)

    def _forget(self, job_ids: list[str]):
        self.tracker.forget(job_ids)
        for job_id in job_ids:
            self._job_owners.pop(job_id, None)

    def _job_info(self, obj) -> JobInfo | None:
        job_id = obj.state.get("job_id")
        return self.tracker.get(job_id) if job_id else None

    async def process_cluster_options(self, user, request):
        """Check the resulting config whatever options the admin defined (see options.py):
        paths and variables are checked, nothing is run."""
        options, config = await super().process_cluster_options(user, request)
        try:
            config.conda_env = check_conda_env(config.conda_env)
            config.environment, dropped = filter_environment(
                config.environment, self.environment_deny
            )
        except ValueError as exc:
            raise PublicException(str(exc)) from None
        if dropped:
            self.log.info("Not forwarding env %s for user %s", sorted(dropped), user.name)
        return options, config

    async def start_cluster(self, user, cluster_options):
        """As the stock method, checked cheapest first: who the user is, the options, her
        limits (counting clusters still being checked), how many of her requests are being
        checked, and only then, as the user, her log directory and job environment."""
        username = user.name
        problem = user_problem(username, self.user_policy, service_uid=os.getuid())
        if problem:
            # 422, not 403: through the proxy, the stock client shows a 422's message only.
            self.log.warning("Refused a cluster for %r: %s", username, problem)
            raise PublicException(problem)
        options, config = await self.process_cluster_options(user, cluster_options)
        admitted = self._admit(username, config)
        reservation = object()
        reserved = self._reserved.setdefault(username, {})
        reserved[reservation] = admitted  # no await since the check
        try:
            checking = self._checking.get(username, 0)
            if checking >= self.max_concurrent_starts_per_user:
                raise web.HTTPTooManyRequests(
                    reason=f"{checking} of your new clusters are still being checked and the "
                    f"limit per user is {self.max_concurrent_starts_per_user}; wait for them"
                )
            self._checking[username] = checking + 1
            try:
                await self._check_as_user(username, config)
            finally:
                self._checking[username] -= 1
                if not self._checking[username]:
                    del self._checking[username]
            del reserved[reservation]
            # Admitted above and counted since: created with no await in between.
            cluster = self.db.create_cluster(username, options, config.to_dict())
        finally:
            reserved.pop(reservation, None)
            if not reserved:
                self._reserved.pop(username, None)
        self.log.info("Created cluster %s for user %s", cluster.name, username)
        self.queue.put(cluster)
        return cluster.name

    def _user_limits(self) -> UserLimits:
        return UserLimits(
            self.max_clusters_per_user,
            self.max_cores_per_user,
            self.max_memory_per_user,
            self.max_workers_per_user,
        )

    def _admit(self, username: str, config) -> dict:
        """Check a new cluster against the user's limits, counting her active clusters and
        those being checked; return its config, to be counted too until it is created."""
        # list_clusters() without statuses lists only active clusters
        active = [(c.config, c.count) for c in self.db.list_clusters(username=username)]
        active += [(r, 0) for r in self._reserved.get(username, {}).values()]
        try:
            most = admit(self._user_limits(), active, config.to_dict())
        except ValueError as exc:
            raise PublicException(str(exc)) from None
        if most is not None and (
            config.cluster_max_workers is None or most < config.cluster_max_workers
        ):
            config.cluster_max_workers = most
        return config.to_dict()

    async def _check_as_user(self, username: str, config) -> None:
        """Her log directory (if it exists) cannot be redirected, and her job environment
        is usable: a bad request fails here in seconds, before anything is submitted."""
        problem = self._user_directory_problem(username, config.log_directory)
        if problem:
            raise PublicException(one_line(f"log directory: {problem}"))
        if self.check_environments:
            try:
                await self.as_user.check_environment(
                    username,
                    config.conda_env,
                    dask_gateway_server_version,
                    self.env_check_timeout,
                )
            except UserError as exc:
                raise PublicException(str(exc)) from None

    def _user_directory_problem(self, username: str, log_directory: str) -> str | None:
        """Why the user's log directory could be redirected by someone else (None: it
        cannot, or it does not exist yet and will be created by the user)."""
        path = os.path.normpath(log_directory.format(username=username))
        uid = pwd.getpwnam(username).pw_uid
        if not os.path.lexists(path):
            return None
        return directory_problem(path, uid)

    async def on_cluster_heartbeat(self, cluster_name, msg):
        # dask-gateway-server internals (DBBackendBase.on_cluster_heartbeat): the scheduler's
        # heartbeat carries the number of workers it wants (scale, adapt). Cap it to what
        # the user's limits leave beside her other clusters, then let the stock code act.
        cluster = self.db.get_cluster(cluster_name)
        if cluster is not None:
            count = msg.get("count")
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                # Sent by the user's own scheduler: anything but a count changes nothing.
                self.log.warning("Cluster %s sent a bad worker count %.100r", cluster_name, count)
                msg = {**msg, "count": cluster.count}
            others = [
                (c.config, c.count)
                for c in self.db.list_clusters(username=cluster.username)
                if c.name != cluster_name
            ] + [(r, 0) for r in self._reserved.get(cluster.username, {}).values()]
            most = workers_allowed(self._user_limits(), others, cluster.config)
            if most is not None and msg["count"] > most:
                self.log.info(
                    "Cluster %s asked for %d workers; the user's limits leave %d",
                    cluster_name,
                    msg["count"],
                    most,
                )
                msg = {**msg, "count": most}
        await super().on_cluster_heartbeat(cluster_name, msg)

    # -- polling ---------------------------------------------------------------------------

    async def _poll_loop(self):
        while True:
            await asyncio.sleep(self.slurm_poll_period)
            try:
                await self._poll_slurm()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.warning("Error while polling SLURM", exc_info=True)

    async def _poll_slurm(self):
        await self.tracker.poll()
        for info in self.tracker.take_ended():
            cluster_name, worker_name = self._job_owners.get(info.job_id, (None, None))
            cluster = self.db.get_cluster(cluster_name) if cluster_name else None
            if cluster is None or cluster.target > JobStatus.RUNNING:
                continue
            if worker_name is None:
                # A running cluster would otherwise only be noticed when heartbeats stop.
                self.log.info("Scheduler job %s of cluster %s ended", info.job_id, cluster.name)
                await self.stop_cluster(cluster.name, failed=True)
            elif info.state in NOT_THE_JOBS_FAULT:
                worker = cluster.workers.get(worker_name)
                if worker is not None and worker.target == JobStatus.RUNNING:
                    self.log.info(
                        "Cluster %s: %s; replacing it (not counted as a failure)",
                        cluster.name,
                        describe_job("worker", info),
                    )
                    self.db.update_worker(worker, target=JobStatus.FAILED)
                    self.queue.put(worker)

    @property
    def job_marker(self) -> str:
        """Every job's ``--comment``: tells this gateway's jobs from others'. Everybody can
        read it, so it names no cluster."""
        return f"dask-gateway@{self.state_directory}"

    async def _orphan_loop(self):
        while True:
            try:
                await self._cancel_orphans()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.warning("Error while checking for orphan jobs", exc_info=True)
            await asyncio.sleep(self.orphan_check_period)

    async def _cancel_orphans(self):
        """Cancel active jobs bearing our job names and marker that no active cluster owns.

        Only the jobs of users who have had a cluster here are looked at (an orphan is a
        job submitted for a cluster but not recorded). Any user can name a job like ours, so
        each candidate's owner, name and marker are confirmed from SLURM for that job id
        alone before it is cancelled, as its owner; at most ``MAX_ORPHAN_CHECKS`` a sweep."""
        users = sorted({c.username for c in self.db.list_clusters(statuses=list(ClusterStatus))})
        if not users:
            return
        result = await self.runner.run(named_jobs_command(self._job_names, users, self.squeue))
        if not result.ok:
            self.log.warning("Orphan check skipped: %s", result.summary())
            return
        now = time.time()
        seen = parse_squeue(result.stdout)
        self._not_ours &= seen.keys()  # forget jobs that are gone
        candidates = [
            (job_id, info)
            for job_id, info in seen.items()
            if info.is_active
            and job_id not in self._job_owners
            and job_id not in self._stopping
            and job_id not in self._not_ours
            and now - _epoch(info.submit_time) > self.orphan_min_age
        ]
        orphans: dict[str, list[str]] = {}
        for job_id, info in candidates[:MAX_ORPHAN_CHECKS]:
            ours = await self._is_ours(job_id, info.user)
            if ours:
                orphans.setdefault(info.user, []).append(job_id)
            elif ours is False:
                self._not_ours.add(job_id)  # never asked about again
                self.log.info(
                    "Job %s of user %s has the gateway's job name but not its marker; left alone",
                    job_id,
                    info.user,
                )
        for user, job_ids in orphans.items():
            self.log.warning(
                "Cancelling orphan jobs of user %s (no active cluster owns them): %s",
                user,
                " ".join(job_ids),
            )
            try:
                await self._cancel(user, job_ids)
            except SlurmError as exc:
                self.log.warning("Could not cancel orphan jobs of user %s: %s", user, exc)

    async def _is_ours(self, job_id: str, user: str) -> bool | None:
        """Whether SLURM confirms the job as one of ours (None: SLURM could not say)."""
        if user_problem(user, self.user_policy, service_uid=os.getuid()):
            return False  # never a job this gateway could have submitted
        result = await self.runner.run(job_marker_command(job_id, self._job_names, self.squeue))
        if not result.ok:
            return None
        return confirms_marker(result.stdout, job_id, user, self.job_marker)

    def _is_alive(self, obj) -> bool:
        info = self._job_info(obj)
        return info is None or info.is_active or info.state in NOT_THE_JOBS_FAULT

    async def do_check_clusters(self, clusters):
        return [self._is_alive(c) for c in clusters]

    async def do_check_workers(self, workers):
        # Jobs that ended through no fault of their own are replaced by _poll_slurm instead,
        # so that they do not count against the cluster's failure limit.
        return [self._is_alive(w) for w in workers]

    async def _check_cluster_scale(self, cluster):
        # The stock method creates the missing workers one database commit each, without
        # yielding: a scale(500) held every API request for over a second. Same records,
        # created in chunks of one transaction each, yielding to the event loop between.
        if cluster.worker_start_failure_count >= self.worker_start_failure_limit:
            return await super()._check_cluster_scale(cluster)
        while cluster.target == JobStatus.RUNNING:
            missing = cluster.count - len(cluster.active_workers())
            if missing <= 0:
                return
            for worker in self._create_workers(cluster, min(missing, WORKERS_PER_TRANSACTION)):
                self.log.info("Created worker %s for cluster %s", worker.name, cluster.name)
                self.queue.put(worker)
            await asyncio.sleep(0)

    def _create_workers(self, cluster, count: int) -> list[Worker]:
        """``count`` new workers of a cluster, as DataManager.create_worker makes them, in
        one transaction."""
        created = []
        with self.db.db.begin() as connection:
            for _ in range(count):
                fields = {
                    "name": uuid.uuid4().hex,
                    "status": JobStatus.CREATED,
                    "target": JobStatus.RUNNING,
                    "state": {},
                    "start_time": timestamp(),
                    "close_expected": False,
                }
                result = connection.execute(
                    workers_table.insert().values(cluster_id=cluster.id, **fields)
                )
                created.append(Worker(id=result.inserted_primary_key[0], cluster=cluster, **fields))
        for worker in created:
            cluster.workers[worker.name] = worker
        return created

    async def _check_timeouts(self):
        # Replaces the stock check, which counts queue wait against start timeouts: it
        # cancels schedulers and workers merely waiting in a busy queue, and re-submits the
        # workers at the back of it. Here a worker's start timeout counts from when SLURM
        # started its job; a scheduler's from the cluster's creation (the default, so that
        # users hear within 2 minutes) or, with queue_aware_start, from its job's start.
        now = time.time()
        heartbeat_cutoff = timestamp() - self.cluster_heartbeat_timeout * 1000
        cluster_updates, worker_updates = [], []
        for cluster in self.db.active_clusters():
            if cluster.status == JobStatus.SUBMITTED:
                if self._scheduler_timed_out(cluster, now):
                    self.log.info("Cluster %s startup timed out", cluster.name)
                    cluster_updates.append((cluster, {"target": JobStatus.FAILED}))
            elif cluster.status == JobStatus.RUNNING:
                if cluster.last_heartbeat < heartbeat_cutoff:
                    self.log.info("Cluster %s heartbeat timed out", cluster.name)
                    cluster_updates.append((cluster, {"target": JobStatus.FAILED}))
                    continue
                for worker in cluster.workers.values():
                    if worker.status == JobStatus.SUBMITTED and worker.target == JobStatus.RUNNING:
                        info = self._job_info(worker)
                        if (
                            info
                            and info.running_since
                            and (now - info.running_since > self.worker_start_timeout)
                        ):
                            self._record_worker_failure(
                                cluster,
                                f"{describe_job('worker', info)} but its worker did not connect "
                                f"within {self.worker_start_timeout:.0f} s",
                            )
                            cluster.worker_start_failure_count += 1
                            worker_updates.append((worker, {"target": JobStatus.FAILED}))
        self.db.update_clusters(cluster_updates)
        self.db.update_workers(worker_updates)
        for obj, _ in cluster_updates + worker_updates:
            self.queue.put(obj)

    def _scheduler_timed_out(self, cluster, now: float) -> bool:
        waited = now - cluster.start_time / 1000
        if not self.queue_aware_start:
            return waited > self.cluster_start_timeout
        info = self._job_info(cluster)
        if info and info.running_since:
            return now - info.running_since > self.cluster_start_timeout
        return waited > self.scheduler_queue_timeout

    # -- clusters --------------------------------------------------------------------------

    async def do_start_cluster(self, cluster):
        # Named by start time and chance, not by the cluster: a cluster's name is the key
        # to its dashboard, and stays out of every path (a log path shows in error messages,
        # `ps` and, where a site's template puts it there, in `scontrol show job`).
        user_directory = self._user_log_directory(cluster)
        subdirectory = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
        state = {"log_directory": f"{user_directory}/{subdirectory}"}
        try:
            await self.as_user.prepare_log_directory(
                cluster.username, user_directory, subdirectory, cluster.name
            )
            script = self._render(cluster, "scheduler", log_directory=state["log_directory"])
            [job_id] = await self._sbatch(cluster, script)
        except Exception as exc:
            failure = (
                str(exc) if isinstance(exc, SlurmError | UserError | ValueError) else repr(exc)
            )
            self.db.update_cluster(
                cluster, state={**state, "failure": f"Cluster {cluster.name} failed: {failure}"}
            )
            raise
        self._track(job_id, cluster)
        self.log.info(
            "Cluster %s of user %s: scheduler job %s submitted",
            cluster.name,
            cluster.username,
            job_id,
        )
        yield {**state, "job_id": job_id}

    async def do_stop_cluster(self, cluster):
        job_ids = [
            w.state["job_id"]
            for w in cluster.workers.values()
            if w.status < JobStatus.STOPPED and w.state.get("job_id")
        ]
        scheduler_job = cluster.state.get("job_id")
        if scheduler_job:
            job_ids.insert(0, scheduler_job)
        last_line_of = None
        if cluster.target == JobStatus.FAILED and "failure" not in cluster.state:
            # The SLURM facts are recorded before the job's log is read (as the user, which
            # can be slow): a restarted gateway never does that work again.
            reason, last_line_of = await self._explain_failure(cluster)
            self.db.update_cluster(cluster, state={**cluster.state, "failure": reason})
        try:
            await self._cancel(cluster.username, job_ids)
        finally:
            self._forget(job_ids)
        if last_line_of:
            last_line = await self.as_user.last_log_line(cluster.username, last_line_of)
            if last_line:
                reason = cluster.state["failure"]
                head, _, tail = reason.rpartition(". Log: ")
                reason = f"{head}; last log line: {last_line}. Log: {tail}"
                self.db.update_cluster(cluster, state={**cluster.state, "failure": reason})
        if cluster.target == JobStatus.FAILED:
            self.log.warning("User %s: %s", cluster.username, cluster.state.get("failure"))

    async def _explain_failure(self, cluster) -> tuple[str, str | None]:
        """One line saying why a cluster failed, with the SLURM facts, and the log whose
        last line should be added to it (None: none)."""
        job_id = cluster.state.get("job_id")
        if not job_id:
            return f"Cluster {cluster.name} failed before its scheduler job was submitted", None
        await self.tracker.poll()
        info = self.tracker.get(job_id) or JobInfo(job_id, state=UNKNOWN)
        facts = describe_job("scheduler", info)
        log_file = f"{cluster.state['log_directory']}/scheduler-{job_id}.log"
        if info.is_terminal:
            why = facts
            if info.state == "TIMEOUT":
                why += f"; the cluster reached its walltime ({cluster.config['walltime']})"
        elif not cluster.scheduler_address:
            if info.state in ("PENDING", "SUBMITTED"):
                limit = (
                    self.scheduler_queue_timeout
                    if self.queue_aware_start
                    else self.cluster_start_timeout
                )
                why = f"the scheduler did not start within {limit:.0f} s: {facts}"
            else:
                why = (
                    f"the scheduler did not contact the gateway within "
                    f"{self.cluster_start_timeout:.0f} s: {facts}"
                )
            why += "; the job was cancelled"
        elif cluster.worker_start_failure_count >= self.worker_start_failure_limit:
            why = (
                f"{cluster.worker_start_failure_count} workers in a row failed to start, last: "
                f"{cluster.state.get('last_worker_failure', 'no details')}"
            )
            logs = cluster.state["log_directory"]
            return f"Cluster {cluster.name} failed: {why}. Logs: {logs}", None
        else:
            why = f"the scheduler stopped sending heartbeats: {facts}; the job was cancelled"
        return f"Cluster {cluster.name} failed: {why}. Log: {log_file}", log_file

    # -- workers ---------------------------------------------------------------------------

    async def do_start_worker(self, worker):
        # Workers started together (scale(n), adaptive growth) leave as one job array.
        job_id = await self._worker_submissions.add(worker.cluster.name, worker)
        yield {"job_id": job_id}

    async def _submit_workers(self, cluster_name: str, workers: list) -> list[str]:
        cluster = workers[0].cluster
        try:
            try:
                job_ids = await self._submit_many(cluster, workers)
            except SlurmError as exc:
                if len(workers) == 1 or "array" not in str(exc).lower():
                    raise
                self.log.warning("Job arrays refused (%s); submitting single jobs", exc)
                job_ids = [
                    job_id
                    for worker in workers
                    for job_id in await self._submit_many(cluster, [worker])
                ]
        except Exception as exc:
            self._record_worker_failure(cluster, f"{len(workers)} worker(s) not submitted: {exc}")
            raise
        self.log.info(
            "Cluster %s: %d worker(s) submitted as job %s",
            cluster.name,
            len(workers),
            job_ids[0].split("_")[0],
        )
        return job_ids

    async def _submit_many(self, cluster, workers: list) -> list[str]:
        script = self._render(cluster, "worker", workers, cluster.state["log_directory"])
        job_ids = await self._sbatch(cluster, script, len(workers))
        # Tracked at once, so that the orphan check never takes them for strays.
        for worker, job_id in zip(workers, job_ids, strict=True):
            self._track(job_id, cluster, worker)
        return job_ids

    def _cancel_unclaimed(self, cluster_name: str, job_id: str):
        # The worker's start was abandoned (timed out) while its job was being submitted.
        cluster = self.db.get_cluster(cluster_name)
        if cluster is not None:
            self.log.info("Cancelling job %s of an abandoned worker start", job_id)
            self.task_pool.spawn(self._cancellations.add(cluster.username, job_id))

    async def do_stop_worker(self, worker):
        job_id = worker.state.get("job_id")
        if not job_id:
            return
        info = self.tracker.get(job_id) or JobInfo(job_id, state=UNKNOWN)
        if worker.target == JobStatus.FAILED and info.state != "COMPLETED":
            self._record_worker_failure(worker.cluster, describe_job("worker", info))
        try:
            await self._cancellations.add(worker.cluster.username, job_id)
        finally:
            self._forget([job_id])

    async def _cancel_batch(self, username: str, job_ids: list[str]) -> list[None]:
        await self._cancel(username, job_ids)
        return [None] * len(job_ids)

    def _record_worker_failure(self, cluster, text: str):
        self.log.warning("Cluster %s: %s", cluster.name, text)
        self.db.update_cluster(cluster, state={**cluster.state, "last_worker_failure": text})

    # -- job scripts -----------------------------------------------------------------------

    def _user_log_directory(self, cluster) -> str:
        return os.path.normpath(cluster.config["log_directory"].format(username=cluster.username))

    def _render(self, cluster, role: str, workers: list = (), log_directory: str = "") -> str:
        config = cluster.config
        if role == "scheduler":
            command = self.get_scheduler_command(cluster)
            cpus, memory = config["scheduler_cores"], config["scheduler_memory"]
            partition = config["scheduler_partition"] or config["partition"]
            walltime = config["walltime"]
        else:
            seconds = self._worker_seconds(cluster)
            command = self._worker_command(cluster, seconds)
            cpus, memory = config["worker_cores"], config["worker_memory"]
            partition = config["partition"]
            walltime = format_walltime(seconds)
        # The gateway's variables always win: a user's variable of the same name is dropped.
        gateway_environment = {
            k: v
            for k, v in self.get_env(cluster).items()
            if k not in config["environment"] or v != config["environment"][k]
        }
        user_environment = {
            k: v for k, v in config["environment"].items() if k not in gateway_environment
        }
        job = {
            "name": f"{self.job_name_prefix}-{role}",
            "comment": self.job_marker,
            "log_directory": log_directory,
            "array": f"0-{len(workers) - 1}" if len(workers) > 1 else "",
            "cpus": cpus,
            "memory": f"{math.ceil(memory / 2**20)}M",
            "walltime": walltime,
            "partition": partition,
            "account": config["account"],
            "qos": config["qos"],
            "reservation": config["reservation"],
            "constraint": config["constraint"] if role == "worker" else "",
            "gres": config["gres"] if role == "worker" else "",
            "extra_directives": config["extra_directives"] + config[f"{role}_extra_directives"],
        }
        return render_job_script(
            self.templates,
            f"{role}.sh.j2",
            {
                "role": role,
                "cluster_name": cluster.name,
                "job": job,
                "conda_env": config["conda_env"],
                "user_environment": user_environment,
                "gateway_environment": gateway_environment,
                "tls_cert": cluster.tls_cert.decode(),
                "tls_key": cluster.tls_key.decode(),
                "command": command,
                "worker_names": [w.name for w in workers],
                "user_log_directory": self._user_log_directory(cluster),
                "log_retention_days": config["log_retention_days"],
            },
        )

    def _worker_seconds(self, cluster) -> float:
        """A worker's walltime: its own limit, cut to what is left of the cluster's life."""
        config = cluster.config
        cluster_left = walltime_seconds(config["walltime"]) - (
            time.time() - cluster.start_time / 1000
        )
        wanted = walltime_seconds(config["worker_walltime"] or config["walltime"])
        return max(60.0, min(wanted, cluster_left))

    def _lifetime_args(self, seconds: float) -> list[str]:
        """dask's --lifetime: leave (staggered) before the walltime so the work moves on."""
        margin = min(self.worker_walltime_margin, seconds / 4)
        return ["--lifetime", f"{seconds - margin:.0f}s", "--lifetime-stagger", f"{margin:.0f}s"]

    def _worker_command(self, cluster, seconds: float) -> list[str]:
        """The worker command without ``--name``, which the job script adds per array task."""
        nthreads, memory_limit = self.worker_nthreads_memory_limit_args(cluster)
        command = [
            *cluster.config.worker_cmd,
            cluster.scheduler_address,
            "--dashboard-address",
            f"{self.default_host}:0",
            "--nthreads",
            nthreads,
            "--memory-limit",
            memory_limit,
            # Exit when the scheduler is gone instead of waiting for the walltime.
            "--death-timeout",
            "60",
            *self._lifetime_args(seconds),
        ]
        if self.listen_host:
            command += ["--host", self.listen_host]
        return command

    # -- SLURM commands as the user ----------------------------------------------------------

    async def _sbatch(self, cluster, script: str, tasks: int = 1) -> list[str]:
        """Submit a job (or job array of ``tasks`` tasks) as the cluster's user; return the
        job ids.

        Before each submission the user's log directory is checked again: the job's output
        and working directory must be where nobody else can redirect them. While slurmctld
        does not answer, retry for ``slurm_retry_timeout`` seconds."""
        username = cluster.username
        problem = directory_problem(
            self._user_log_directory(cluster), pwd.getpwnam(username).pw_uid
        )
        if problem:
            raise UserError(f"nothing was submitted: {problem}")
        deadline = time.monotonic() + self.slurm_retry_timeout
        delay = 1.0
        while True:
            result = await self.runner.run(
                sbatch_command(self.sbatch), user=username, stdin=script.encode()
            )
            if result.ok:
                return parse_sbatch_job_ids(result.stdout, tasks)
            if not slurm_unreachable(result.stderr):
                raise SlurmError(f"SLURM refused the job: {result.summary()}")
            if time.monotonic() + delay > deadline:
                raise SlurmError(
                    f"SLURM unavailable for {self.slurm_retry_timeout:.0f} s "
                    f"(slurmctld does not answer): {result.summary()}"
                )
            self.log.warning("SLURM unavailable, retrying sbatch in %.0f s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)

    async def _cancel(self, username: str, job_ids: list[str]):
        """End jobs: running ones get SIGTERM, then are cancelled after a grace period if
        they are still there; the others are cancelled at once."""
        running = [j for j in job_ids if (info := self.tracker.get(j)) and info.is_running]
        if running:
            result = await self.runner.run(terminate_command(running, self.scancel), user=username)
            if result.ok:
                self.log.info("Sent SIGTERM to jobs of user %s: %s", username, " ".join(running))
                # No orphans meanwhile: the orphan sweep would cut their grace period short.
                self._stopping.update(running)
                self.task_pool.spawn(self._cancel_after_grace(username, running))
                job_ids = [j for j in job_ids if j not in running]
        await self._scancel(username, job_ids)

    async def _cancel_after_grace(self, username: str, job_ids: list[str]):
        # Jobs that already ended make scancel complain, which _scancel ignores.
        try:
            await asyncio.sleep(self.cancel_grace_period)
            await self._scancel(username, job_ids)
        finally:
            self._stopping.difference_update(job_ids)

    async def _scancel(self, username: str, job_ids: list[str]):
        if not job_ids:
            return
        result = await self.runner.run(scancel_command(job_ids, self.scancel), user=username)
        if result.ok:
            self.log.info("Cancelled jobs of user %s: %s", username, " ".join(job_ids))
        elif slurm_unreachable(result.stderr):
            # Never forget a job to cancel because slurmctld is away: retry until it answers.
            self.log.warning("SLURM unavailable, will retry cancelling %s", " ".join(job_ids))
            self.task_pool.spawn(self._cancel_when_slurm_answers(username, job_ids))
        # scancel exits non-zero for jobs that already ended; that is what we wanted.
        elif "already" not in result.stderr and "Invalid job id" not in result.stderr:
            raise SlurmError(f"could not cancel jobs {', '.join(job_ids)}: {result.summary()}")

    async def _cancel_when_slurm_answers(self, username: str, job_ids: list[str]):
        delay = 2.0
        while True:
            await asyncio.sleep(delay)
            result = await self.runner.run(scancel_command(job_ids, self.scancel), user=username)
            if not slurm_unreachable(result.stderr):
                self.log.info("Cancelled jobs of user %s: %s", username, " ".join(job_ids))
                return
            delay = min(delay * 2, 30)

    # -- API -----------------------------------------------------------------------------

    @web.middleware
    async def _failure_reason_middleware(self, request, handler):
        response = await handler(request)
        name = request.match_info.get("cluster_name")
        if (
            request.method == "GET"
            and "wait" in request.query
            and response.status == 200  # the route already checked the user may see it
            and name
            and request.path.endswith(f"/api/v1/clusters/{name}")
        ):
            cluster = self.db.get_cluster(name)
            if cluster is not None and cluster.status == JobStatus.FAILED:
                failure = (cluster.state or {}).get("failure") or (
                    f"Cluster {name} failed; no SLURM details were recorded"
                )
                return web.json_response({"error": failure}, status=409)
        return response


@web.middleware
async def _request_body_middleware(request, handler):
    if request.method == "POST":
        path = request.path.rstrip("/")
        action = path.rsplit("/", 1)[-1]
        if path.endswith("/api/v1/clusters"):
            action = "create"
        elif action not in ("scale", "adapt") or "cluster_name" not in request.match_info:
            action = None
        if action:
            try:
                body = await request.json()
            except (ValueError, RecursionError):
                body = None
            problem = request_body_problem(action, body)
            if problem:
                return web.json_response({"error": problem}, status=422)
    return await handler(request)


def _epoch(slurm_time: str) -> float:
    """Seconds since the epoch of a SLURM timestamp (local time); now if unreadable."""
    try:
        return datetime.fromisoformat(slurm_time).timestamp()
    except ValueError:
        return time.time()
