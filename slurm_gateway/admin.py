"""The admin channel of the running gateway: ``slurm-gateway clusters``, ``stop`` and
``health``.

Listing every user's clusters with their jobs' current SLURM states, and stopping one with a
reason its user sees, need the running gateway: it knows what the last ``squeue`` said about
each job, and only it can stop a cluster (cancel its jobs, record the reason in the
cluster's state, answer the user's client with it). The database alone knows neither.
``health`` is ``/api/health`` with what each part last said (a database socket path,
an SSH target, SLURM's stderr): too much for the public route, what an admin needs.

The channel is a Unix socket, ``admin.sock`` in the gateway's private state directory
(mode 0700, the service account's): only root and the service account can reach it, it is
never exposed through the proxy or the network, and it needs no secret that could leak.
The gateway also checks the peer's credentials (``SO_PEERCRED``) and serves only root and
its own uid. The protocol: one JSON object on one line each way, bounded in size and time.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import struct
import time
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dask_gateway_server.backends.db_base import JobStatus
from dask_gateway_server.models import ClusterStatus

SOCKET_NAME = "admin.sock"
# The longest request line the gateway reads, and the seconds a client has to send it.
MAX_REQUEST_BYTES = 64 * 1024
REQUEST_TIMEOUT = 10.0
# Seconds ``stop`` waits for the cluster's jobs to be cancelled before answering.
STOP_WAIT = 60.0
MAX_REASON_CHARS = 200
# Linux's limit on a Unix socket's path (sun_path holds 108 bytes with the final NUL).
MAX_SOCKET_PATH = 107


def socket_path(state_directory: str | os.PathLike) -> Path:
    """The admin socket of the gateway whose state directory is ``state_directory``."""
    return Path(state_directory) / SOCKET_NAME


def reason_problem(reason: str) -> str | None:
    """Why ``reason`` (an admin's text, shown to the cluster's user) is refused, or None.

    At most :data:`MAX_REASON_CHARS` characters, one line, and no control or formatting
    characters (which could rewrite what the user's terminal shows)."""
    if not isinstance(reason, str):
        return "the reason must be text"
    if len(reason) > MAX_REASON_CHARS:
        return f"the reason has {len(reason)} characters; at most {MAX_REASON_CHARS}"
    for char in reason:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            return (
                f"the reason contains the control character U+{ord(char):04X}; "
                "use one line of plain text"
            )
    return None


def stop_message(cluster_name: str, reason: str) -> str:
    """The failure recorded for a cluster an admin stopped, as its user sees it."""
    reason = reason.strip()
    text = f"Cluster {cluster_name} was stopped by an administrator"
    return f"{text}: {reason}" if reason else text


def peer_allowed(peer_uid: int, service_uid: int) -> bool:
    """Whether a process of ``peer_uid`` may use the admin channel: root and the gateway's
    own account only."""
    return peer_uid in (0, service_uid)


def find_cluster(clusters: Iterable[Any], key: str) -> Any | None:
    """The cluster named ``key`` or, failing that, whose scheduler job id is ``key`` (the id
    admins see in ``squeue``, which keeps the secret name off command lines)."""
    clusters = list(clusters)
    for cluster in clusters:
        if cluster.name == key:
            return cluster
    for cluster in clusters:
        if key and (cluster.state or {}).get("job_id") == key:
            return cluster
    return None


def cluster_summary(cluster: Any, job_state: Callable[[str], str], now: float) -> dict:
    """What ``slurm-gateway clusters`` shows of one cluster (a dask-gateway-server
    ``Cluster``): owner, status, age, its active jobs with their SLURM states, resources.
    ``job_state(job_id)`` is SLURM's last word on a job."""
    config = cluster.config or {}
    scheduler_job = (cluster.state or {}).get("job_id")
    workers = [
        {"id": w.state.get("job_id", ""), "state": job_state(w.state["job_id"])}
        if (w.state or {}).get("job_id")
        else {"id": "", "state": "SUBMITTING"}
        for w in cluster.workers.values()
        if w.target < JobStatus.STOPPED
    ]
    worker_cores = int(config.get("worker_cores", 0))
    worker_memory = int(config.get("worker_memory", 0))
    scheduler_cores = int(config.get("scheduler_cores", 0))
    scheduler_memory = int(config.get("scheduler_memory", 0))
    active = cluster.target < JobStatus.STOPPED
    scheduler = {"id": scheduler_job, "state": job_state(scheduler_job)} if scheduler_job else None
    summary = {
        "name": cluster.name,
        "user": cluster.username,
        "status": cluster.model_status.name,
        "age": max(0.0, now - cluster.start_time / 1000),
        "scheduler": scheduler,
        "workers": workers,
        "requested_workers": int(cluster.count or 0),
        "worker_cores": worker_cores,
        "worker_memory": worker_memory,
        "cores": (scheduler_cores if active else 0) + len(workers) * worker_cores,
        "memory": (scheduler_memory if active else 0) + len(workers) * worker_memory,
        "log_directory": (cluster.state or {}).get("log_directory", ""),
    }
    if cluster.status == JobStatus.FAILED:
        summary["failure"] = (cluster.state or {}).get("failure", "")
    return summary


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return uid


class AdminChannel:
    """The backend's admin channel (a mixin of ``SlurmBackend``): the socket is served
    from the end of the backend's setup to the start of its cleanup."""

    _admin_server: asyncio.AbstractServer | None = None

    async def setup(self, app) -> None:
        await super().setup(app)
        path = socket_path(self.state_directory)
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            self.log.warning("No admin channel: the socket path %s is too long", path)
            return
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # left by a gateway that did not stop cleanly
        except FileNotFoundError:
            pass
        self._admin_server = await asyncio.start_unix_server(
            self._admin_connection, path=str(path), limit=MAX_REQUEST_BYTES
        )
        os.chmod(path, 0o600)
        self.log.info("Admin channel (slurm-gateway clusters, stop, health) at %s", path)

    async def cleanup(self) -> None:
        if self._admin_server is not None:
            self._admin_server.close()
            try:
                os.unlink(socket_path(self.state_directory))
            except OSError:
                pass
        await super().cleanup()

    async def _admin_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            uid = _peer_uid(writer)
            if uid is None or not peer_allowed(uid, os.getuid()):
                answer = {"error": "only root and the gateway's service account may do this"}
            else:
                try:
                    line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
                    request = json.loads(line)
                except (TimeoutError, ValueError, asyncio.LimitOverrunError):
                    request = None
                answer = await self.admin_request(request, uid)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except Exception:
            self.log.warning("Error on the admin channel", exc_info=True)
        finally:
            writer.close()

    async def admin_request(self, request: Any, uid: int) -> dict:
        """The answer to one admin request (``{"op": "clusters"}``, ``{"op": "stop"}``
        or ``{"op": "health"}``)."""
        if not isinstance(request, dict):
            return {"error": "a request is one JSON object on one line"}
        if request.get("op") == "clusters":
            return {"clusters": self.admin_clusters(bool(request.get("all")))}
        if request.get("op") == "stop":
            key, reason = request.get("cluster"), request.get("reason", "")
            if not isinstance(key, str) or not key:
                return {"error": "name the cluster (or its scheduler job id)"}
            return await self.admin_stop(key, reason, uid)
        if request.get("op") == "health":
            return {"health": await self.health.admin_report()}
        return {"error": "unknown request"}

    def admin_clusters(self, include_stopped: bool) -> list[dict]:
        statuses = list(ClusterStatus) if include_stopped else None
        now = time.time()

        def job_state(job_id: str) -> str:
            info = self.tracker.get(job_id)
            return info.state if info else ""

        clusters = sorted(
            self.db.list_clusters(statuses=statuses), key=lambda c: (c.username, c.start_time)
        )
        return [cluster_summary(c, job_state, now) for c in clusters]

    async def admin_stop(self, key: str, reason: Any, uid: int) -> dict:
        problem = reason_problem(reason)
        if problem:
            return {"error": problem}
        cluster = find_cluster(self.db.list_clusters(statuses=list(ClusterStatus)), key)
        if cluster is None:
            return {"error": f"no cluster is named {key} or has scheduler job {key}"}
        name, user = cluster.name, cluster.username
        if cluster.target > JobStatus.RUNNING:
            return {"error": f"cluster {name} of {user} is already {cluster.model_status.name}"}
        message = stop_message(name, reason)
        self.db.update_cluster(cluster, state={**cluster.state, "failure": message})
        self.log.warning("User %s: cluster %s stopped by uid %d: %s", user, name, uid, message)
        await self.stop_cluster(name, failed=True)
        try:
            await asyncio.wait_for(cluster.shutdown, STOP_WAIT)
            stopped = True
        except TimeoutError:
            stopped = False
        return {"ok": True, "name": name, "user": user, "stopped": stopped, "message": message}
