"""Every ``c.SlurmBackend`` option: its traits, with help text, and the stock defaults this
backend changes. :class:`~slurm_gateway.backend.SlurmBackend` inherits them; admins set them
as ``c.SlurmBackend.<name>`` (``slurm-gateway generate-config`` lists them all)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cryptography.fernet import Fernet
from dask_gateway_server.backends.db_base import DBBackendBase
from dask_gateway_server.traitlets import MemoryLimit, Type
from traitlets import Bool, Float, Integer, List, Unicode, default

from .identity import UserPolicy
from .lifecycle import StartPolicy
from .limits import UserLimits
from .state import read_or_create_secret
from .user_options import DEFAULT_ENVIRONMENT_DENY, default_options


class SlurmBackendSettings(DBBackendBase):
    """The options of :class:`~slurm_gateway.backend.SlurmBackend`, declared here and set as
    ``c.SlurmBackend.<name>`` (``slurm-gateway generate-config`` documents them there)."""

    cluster_config_class = Type(
        "slurm_gateway.cluster_config.SlurmClusterConfig",
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
    scontrol = Unicode("/usr/bin/scontrol", help="Path to scontrol (as the gateway).", config=True)

    job_name_prefix = Unicode(
        "dask-gateway",
        help="""Jobs are named ``<prefix>-scheduler`` and ``<prefix>-worker``; the gateway
        finds its jobs in squeue by these names.""",
        config=True,
    )

    orphan_check_period = Float(
        min=1,
        help="""Seconds between checks for orphan jobs (this gateway's marker, no active
        cluster: e.g. submitted just before a crash), which are cancelled; the first runs at
        start. Default: five ``slurm_sweep_period`` (about 3 slurmctld RPCs each; orphans
        cost a slot, not correctness; as often as the sweep, it would double the idle cost).""",
        config=True,
    )

    @default("orphan_check_period")
    def _default_orphan_check_period(self):
        return 5 * self.slurm_sweep_period

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
        60,
        min=0.5,
        help="""Seconds between checks that SLURM answers (``scontrol ping``, for
        ``/api/health``) when the gateway had no other reason to ask it. The jobs themselves
        are asked about as ``slurm_pending_period`` and ``slurm_sweep_period`` say, and when
        they report their end. 60 s: one cheap RPC a minute.""",
        config=True,
    )

    slurm_pending_period = Float(
        5,
        min=0.5,
        help="""Seconds between questions to SLURM about jobs still in the queue (one squeue
        for all of them), until they run. A worker's start timeout counts from its job's
        start, and queued schedulers show their pending reason to the user, so their start
        must be seen promptly; queued jobs exist only while clusters start or scale, so this
        costs nothing while clusters are idle. Held jobs (``JobHeldUser``, ``JobHeldAdmin``)
        cannot start until released: they are left to ``slurm_sweep_period``.""",
        config=True,
    )

    slurm_sweep_period = Float(
        120,
        min=1,
        help="""Seconds between questions to SLURM about every job (one squeue): the safety
        net for ends no job can report (SIGKILL, a node lost); running jobs report their own
        end. 120 s keeps an idle gateway O(1) and far below one RPC a minute.""",
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

    env_check_max_age = Float(
        900,
        min=0,
        help="""Seconds a passed ``conda_env`` check is reused for the same user and
        environment while the environment is unchanged (same stat identity of its prefix,
        python, ``conda-meta``/``pyvenv.cfg`` and ``site-packages``; see envcache.py). Any
        change checks it again; 0 checks every new cluster.""",
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
        min=0,
        help="""Workers leave gracefully between this many and twice this many seconds (at
        most a quarter of their walltime each) before their job's walltime, one after the
        other so that their data moves to other workers; the gateway starts a replacement
        while the cluster has time left.""",
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

    held_retry_period = Float(
        30,
        min=1,
        help="""Seconds between attempts to submit workers held because SLURM refused more of
        the user's jobs (MaxSubmitJobs of a QOS or association); also as the user's jobs end.""",
        config=True,
    )

    batch_window = Float(
        0.02,
        min=0,
        help="""Worker submissions (or cancellations) less than this many seconds apart go
        as one sbatch (or scancel) call, at the latest 0.5 s (or this, if longer) after the
        first.""",
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
        return 120.0  # counted from when the worker's job starts RUNNING (dgs_compat)

    @default("check_timeouts_period")
    def _default_check_timeouts_period(self):
        # The base class checks every min(20 s, shortest timeout / 2); time-outs are
        # reported with how long was waited, so check often enough for that to be close.
        return min(5.0, self.cluster_start_timeout / 4, self.cluster_heartbeat_timeout / 4)

    # The stock status checks read what the gateway last learnt of SLURM (no RPC of their
    # own): often, so that what a poll or end report learns is acted on promptly.
    @default("cluster_status_period")
    def _default_cluster_status_period(self):
        return 1.0

    @default("worker_status_period")
    def _default_worker_status_period(self):
        return 1.0

    # The base class passes this to dask for --host and the dashboard/api addresses.
    @property
    def default_host(self) -> str:
        return self.listen_host or "0.0.0.0"

    @property
    def job_marker(self) -> str:
        """Every job's ``--comment``: tells this gateway's jobs from others'. Everybody can
        read it, so it names no cluster."""
        return f"dask-gateway@{self.state_directory}"

    @property
    def job_names(self) -> list[str]:
        """The names of the scheduler's and the workers' jobs."""
        return [f"{self.job_name_prefix}-scheduler", f"{self.job_name_prefix}-worker"]

    def make_user_policy(self) -> UserPolicy:
        """Who may start clusters (``min_user_uid``, ``max_user_uid``, ``allowed_group``)."""
        return UserPolicy(
            min_uid=self.min_user_uid, max_uid=self.max_user_uid, allowed_group=self.allowed_group
        )

    def make_user_limits(self) -> UserLimits:
        """What one user's clusters may hold together (the ``max_*_per_user`` options)."""
        return UserLimits(
            self.max_clusters_per_user,
            self.max_cores_per_user,
            self.max_memory_per_user,
            self.max_workers_per_user,
        )

    def make_start_policy(self) -> StartPolicy:
        """How long schedulers and workers may take to start."""
        return StartPolicy(
            self.cluster_start_timeout,
            self.queue_aware_start,
            self.scheduler_queue_timeout,
            self.worker_start_timeout,
        )
