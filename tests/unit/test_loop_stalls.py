"""No event-loop stall while a cluster's 500 workers are created, submitted and stopped.

The real backend runs here (its setup, the stock reconcilers, a real SQLite state database
in a file, the proxy's route table); only SLURM is simulated, by a command runner that
answers ``sbatch``, ``scancel`` and the user helper at once. A probe measures every pass
of the event loop: while anything holds the loop (database commits, 500 callers resumed
in one pass), every API request waits that long.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import pwd
import time

import pytest
from aiohttp import web
from dask_gateway_server.backends.db_base import JobStatus
from traitlets.config import Config

from slurm_gateway.backend import SlurmBackend
from slurm_gateway.batching import WORKERS_PER_PASS
from slurm_gateway.transport import CommandResult, CommandRunner

WORKERS = 500
#: The longest one pass of the event loop may take (old code: 0.5-1.2 s).
MAX_STEP = 0.05
USER = "alice"

pytestmark = [
    pytest.mark.filterwarnings("ignore::aiohttp.web.NotAppKeyWarning"),  # the stock "gateway"
    pytest.mark.skipif(os.getuid() != 0, reason="the users' log directory is owned by alice"),
]


class FakeSlurm(CommandRunner):
    """SLURM and the user helper as a gateway sees them, answering at once."""

    job_ids = itertools.count(1000)
    cancelled: set[str] = set()

    async def execute(self, argv, *, user, stdin):
        await asyncio.sleep(0.001)  # a command is a subprocess: it always yields
        name = os.path.basename(argv[0])
        if name == "scancel":
            self.cancelled.update(argv[argv.index("--") + 1 :])
        if name == "sbatch":
            return CommandResult(argv, 0, f"{next(self.job_ids)}\n", "")
        if name == "scontrol":
            return CommandResult(argv, 0, "MaxArraySize = 1001\n", "")
        if name in ("squeue", "sacct"):
            return CommandResult(argv, 1, "", "Unable to contact slurm controller")
        return CommandResult(argv, 0, json.dumps({}) + "\n", "")


class LoopSteps(logging.Handler):
    """The duration of every pass of the event loop (a callback that reschedules itself
    runs once per pass), and the most workers created or submitted in one pass (the
    backend's log lines for them)."""

    WORK = ("Created worker", "Submitting worker")

    def __init__(self):
        super().__init__()
        self.longest = 0.0
        self.most_workers = 0
        self._workers = 0
        self._last = None
        self._handle = None

    def emit(self, record):
        if record.msg.startswith(self.WORK):
            self._workers += 1
            self.most_workers = max(self.most_workers, self._workers)

    def _tick(self):
        now = time.perf_counter()
        if self._last is not None:
            self.longest = max(self.longest, now - self._last)
        self._last = now
        self._workers = 0
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def start(self):
        self._last = None
        self.longest = 0.0
        self.most_workers = 0
        self._tick()

    def stop(self) -> float:
        self._handle.cancel()
        return self.longest


async def _until(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _config(tmp_path) -> Config:
    config = Config()
    backend = config.SlurmBackend
    backend.state_directory = str(tmp_path / "state")
    backend.runner_class = FakeSlurm
    backend.slurm_poll_period = 3600.0
    backend.orphan_check_period = 3600.0
    backend.cancel_grace_period = 0.0
    config.SlurmClusterConfig.log_directory = str(tmp_path / "logs" / "{username}")
    config.Proxy.externally_managed = True
    config.Proxy.api_token = "0" * 64
    config.Proxy.address = "127.0.0.1:28101"
    config.Proxy.tcp_address = "127.0.0.1:28102"
    backend.api_url = "http://127.0.0.1:28101/api"
    return config


def _user_directory(tmp_path):
    user_directory = tmp_path / "logs" / USER
    user_directory.mkdir(parents=True)
    os.chown(user_directory, pwd.getpwnam(USER).pw_uid, -1)
    user_directory.chmod(0o700)


def test_500_workers_are_created_submitted_and_stopped_without_a_long_loop_step(tmp_path):
    _user_directory(tmp_path)
    steps = asyncio.run(_scale_and_stop(tmp_path))
    said = ", ".join(
        f"{phase}: {longest * 1000:.0f} ms, {workers} workers"
        for phase, (longest, workers) in steps.items()
    )
    print(said)
    assert max(longest for longest, _ in steps.values()) < MAX_STEP, (
        f"the longest loop step, {said}"
    )
    # A request waits for a few passes (read, handled, written): each does the work of a
    # few workers only (a worker created in a pass, the one before submitted in it). The
    # old code did 100 and 100: list_clusters waited 120 ms during scale(500).
    most = steps["scale(500)"][1]
    assert 0 < most <= 2 * WORKERS_PER_PASS, f"workers handled in one pass: {said}"


def test_a_cluster_stopped_while_its_workers_are_submitted_cancels_every_job(tmp_path):
    _user_directory(tmp_path)
    asyncio.run(_with_backend(tmp_path, _stop_while_scaling))


async def _stop_while_scaling(backend):
    cluster = await _running_cluster(backend)
    await backend.on_cluster_heartbeat(cluster.name, _heartbeat(WORKERS))
    await _until(lambda: len(cluster.workers) >= 200)
    unsubmitted = [w for w in cluster.workers.values() if w.status == JobStatus.CREATED]
    await backend.stop_cluster(cluster.name)
    assert unsubmitted, "every worker was submitted before the cluster was stopped"
    await _until(lambda: cluster.status == JobStatus.STOPPED)
    await _until(lambda: not backend.queue._processing)  # submissions still under way
    submitted = {w.state["job_id"] for w in cluster.workers.values() if w.state.get("job_id")}
    assert submitted <= backend.runner.cancelled
    assert all(w.status == JobStatus.STOPPED for w in cluster.workers.values())


async def _scale_and_stop(tmp_path) -> dict[str, tuple[float, int]]:
    return await _with_backend(tmp_path, _drive)


async def _with_backend(tmp_path, scenario):
    backend = SlurmBackend(config=_config(tmp_path))
    backend.gateway_address = "127.0.0.1:28103"  # the gateway application's, set by it
    app = web.Application()
    app["gateway"] = backend  # the gateway object whose health() the API answers with
    await backend.setup(app)
    try:
        return await scenario(backend)
    finally:
        await backend.cleanup()


async def _running_cluster(backend):
    options, config = await backend.process_cluster_options(_User(), {})
    cluster = backend.db.create_cluster(USER, options, config.to_dict())
    backend.queue.put(cluster)
    await _until(lambda: cluster.status == JobStatus.SUBMITTED)
    return cluster


async def _drive(backend) -> dict[str, tuple[float, int]]:
    cluster = await _running_cluster(backend)
    probe = LoopSteps()
    backend.log.addHandler(probe)
    backend.log.setLevel(logging.INFO)
    probe.start()
    await backend.on_cluster_heartbeat(cluster.name, _heartbeat(WORKERS))
    await _until(
        lambda: (
            len(cluster.workers) == WORKERS
            and all(w.status == JobStatus.SUBMITTED for w in cluster.workers.values())
        )
    )
    steps = {"scale(500)": (probe.stop(), probe.most_workers)}
    probe.start()
    await backend.stop_cluster(cluster.name)
    await _until(lambda: cluster.status == JobStatus.STOPPED)
    steps["shutdown"] = (probe.stop(), probe.most_workers)
    backend.log.removeHandler(probe)
    assert all(w.status == JobStatus.STOPPED for w in cluster.workers.values())
    return steps


class _User:
    name = USER
    groups = ("dask-users",)
    admin = False


def _heartbeat(count: int) -> dict:
    return {
        "count": count,
        "active_workers": [],
        "closing_workers": [],
        "closed_workers": [],
        "scheduler_address": "tls://127.0.0.1:28110",
        "dashboard_address": "http://127.0.0.1:28111",
        "api_address": "http://127.0.0.1:28112",
    }
