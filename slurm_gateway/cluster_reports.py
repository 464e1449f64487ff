"""What a user reads about a cluster (``gateway.get_cluster(name)``, ``list_clusters()``):
the stock report, plus ``options["pending_reason"]`` while some of the cluster's workers
wait in the gateway because SLURM refused more of the user's jobs (``worker_submission``).

The dask_gateway client's ``ClusterReport`` carries the cluster's ``options`` as the server
sent them, so the reason reaches users without a new client. The stock public backend methods
``get_cluster`` and ``list_clusters`` are overridden; :func:`report_problems` lists what a new
dask-gateway-server release changed of what this relies on (a unit test asserts it is empty).
"""

from __future__ import annotations

import inspect

from dask_gateway_server import models
from dask_gateway_server.backends.db_base import Cluster, DBBackendBase

from .submit_limits import pending_reason
from .worker_submission import held_workers

#: The stock methods overridden here, with their parameters.
OVERRIDDEN = {
    "get_cluster": ["self", "cluster_name", "wait"],
    "list_clusters": ["self", "username", "statuses"],
}


def with_pending_reason(model: models.Cluster, cluster: Cluster | None) -> models.Cluster:
    """The report ``model`` of ``cluster``, with why workers wait in the gateway (if any)."""
    held = held_workers(cluster) if cluster is not None else []
    if held:
        limit = cluster.state.get("held_because") or "job submit limit"
        # A copy: the model's options are the cluster record's own dict.
        model.options = {**model.options, "pending_reason": pending_reason(len(held), limit)}
    return model


def report_problems() -> list[str]:
    """What the installed dask-gateway-server lacks of what this module relies on."""
    problems = []
    for name, parameters in OVERRIDDEN.items():
        method = getattr(DBBackendBase, name, None)
        if not inspect.iscoroutinefunction(method):
            problems.append(f"DBBackendBase.{name} is gone or no longer a coroutine")
        elif list(inspect.signature(method).parameters) != parameters:
            problems.append(f"DBBackendBase.{name} now takes {inspect.signature(method)}")
    if '"options": self.options' not in inspect.getsource(models.Cluster.to_dict):
        problems.append("the cluster report (models.Cluster.to_dict) no longer carries options")
    return problems


class PendingReasonReports:
    """Overrides of the stock cluster reports (see the module docstring)."""

    async def get_cluster(self, cluster_name: str, wait: bool = False) -> models.Cluster | None:
        model = await super().get_cluster(cluster_name, wait=wait)
        return model and with_pending_reason(model, self.db.get_cluster(cluster_name))

    async def list_clusters(self, username=None, statuses=None) -> list[models.Cluster]:
        found = await super().list_clusters(username=username, statuses=statuses)
        return [with_pending_reason(m, self.db.get_cluster(m.name)) for m in found]
