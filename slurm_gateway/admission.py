"""Admitting new clusters: a user's limits, counting the clusters she is still waiting for,
and how many of her requests are being checked at once.

A ``new_cluster`` request is checked as the user (her log directory, her environment's
python), which takes seconds; meanwhile its cluster counts against her limits, so that
concurrent requests cannot together exceed them, and only so many of her requests are
checked at once, so that one user cannot tie up the gateway's processes. A passed
environment check is reused while the environment is unchanged (see envcache.py)."""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from aiohttp import web
from dask_gateway_server import __version__ as dask_gateway_server_version
from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.backends.db_base import Cluster
from dask_gateway_server.models import User

from .as_user import UserError, one_line
from .envcache import EnvCache, read_identity
from .identity import user_problem
from .jobspec import user_log_directory
from .limits import UserLimits, admit, workers_allowed
from .user_options import check_conda_env, filter_environment
from .userfs import existing_directory_problem


class TooManyChecks(Exception):
    """The user already has the most requests being checked that she may have."""


def admitted_max_workers(
    limits: UserLimits,
    active: Sequence[tuple[Mapping, int]],
    config: Mapping,
) -> int | None:
    """The ``cluster_max_workers`` a new cluster gets beside the user's ``active`` ones
    (config, workers): its own, cut to what her limits leave. Raises ``ValueError`` saying
    which limit refuses it."""
    most = admit(limits, active, config)
    own = config.get("cluster_max_workers")
    if most is not None and (own is None or most < own):
        return most
    return own


def is_worker_count(value: object) -> bool:
    """Whether a heartbeat's ``count`` is a worker count (a non-negative int)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def capped_worker_count(
    limits: UserLimits,
    others: Sequence[tuple[Mapping, int]],
    config: Mapping,
    requested: object,
    current: int,
) -> int:
    """The worker count a scheduler's heartbeat may set: ``requested`` if it is a count
    (else the ``current`` one is kept: the user's own scheduler sent it), cut to what the
    user's limits leave beside her ``others`` clusters."""
    if not is_worker_count(requested):
        requested = current
    most = workers_allowed(limits, others, config)
    return requested if most is None else min(requested, most)


class Admissions:
    """Per user: the configs of clusters being checked (counted against her limits), how
    many of her requests are being checked, and her environments that passed a check."""

    def __init__(self, max_checking: int, env_check_max_age: float = 0):
        self.max_checking = max_checking
        self.environments = EnvCache(env_check_max_age)
        self._reserved: dict[str, dict[object, Mapping]] = {}
        self._checking: dict[str, int] = {}

    def reserved(self, username: str) -> list[tuple[Mapping, int]]:
        """The user's clusters being checked, as (config, workers) for her limits."""
        return [(config, 0) for config in self._reserved.get(username, {}).values()]

    @contextmanager
    def reservation(self, username: str, config: Mapping) -> Iterator[None]:
        """Count ``config`` against the user's limits until the block ends (by then the
        cluster is created and counted as hers, or refused)."""
        key = object()
        reserved = self._reserved.setdefault(username, {})
        reserved[key] = config
        try:
            yield
        finally:
            reserved.pop(key, None)
            if not reserved:
                self._reserved.pop(username, None)

    @contextmanager
    def checking(self, username: str) -> Iterator[None]:
        """Count one of the user's requests as being checked until the block ends; raise
        :class:`TooManyChecks` if she has the most already."""
        checking = self._checking.get(username, 0)
        if checking >= self.max_checking:
            raise TooManyChecks(
                f"{checking} of your new clusters are still being checked and the "
                f"limit per user is {self.max_checking}; wait for them"
            )
        self._checking[username] = checking + 1
        try:
            yield
        finally:
            self._checking[username] -= 1
            if not self._checking[username]:
                del self._checking[username]


class ClusterAdmission:
    """The backend's ``start_cluster`` and ``process_cluster_options``: a new cluster is
    created only once everything above holds. The backend provides ``user_policy``,
    ``limits``, ``admissions``, ``as_user`` and ``metrics``."""

    async def process_cluster_options(self, user: User, request: dict) -> tuple[dict, Any]:
        """Check the resulting config whatever options the admin defined (see
        user_options.py): paths and variables are checked, nothing is run."""
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

    async def start_cluster(self, user: User, cluster_options: dict) -> str:
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
        active = [(c.config, c.count) for c in self.db.list_clusters(username=username)]
        try:
            config.cluster_max_workers = admitted_max_workers(
                self.limits, active + self.admissions.reserved(username), config.to_dict()
            )
        except ValueError as exc:
            self.metrics.refused_by(getattr(exc, "limit", "other"))
            raise PublicException(str(exc)) from None
        # Reserved with no await since the limits were checked: no other request between.
        with self.admissions.reservation(username, config.to_dict()):
            try:
                with self.admissions.checking(username):
                    await self._check_as_user(username, config)
            except TooManyChecks as exc:
                self.metrics.refused_by("max_concurrent_starts_per_user")
                raise web.HTTPTooManyRequests(reason=str(exc)) from None
            cluster = self.db.create_cluster(username, options, config.to_dict())
        self.log.info("Created cluster %s for user %s", cluster.name, username)
        self.queue.put(cluster)
        return cluster.name

    async def _check_as_user(self, username: str, config: Any) -> None:
        """Her log directory (if it exists) cannot be redirected, and her job environment
        is usable: a bad request fails here in seconds, before anything is submitted."""
        path = user_log_directory(config.log_directory, username)
        problem = existing_directory_problem(path, pwd.getpwnam(username).pw_uid)
        if problem:
            raise PublicException(one_line(f"log directory: {problem}"))
        if self.check_environments:
            await self._check_environment(username, config.conda_env)

    async def _check_environment(self, username: str, prefix: str) -> None:
        """Her job environment, unless it passed a check for her and is unchanged since."""
        cache = self.admissions.environments
        identity = None
        if cache.max_age > 0:
            identity = await read_identity(
                prefix, lambda: self.as_user.environment_identity(username, prefix), user=username
            )
            if cache.is_known_good(username, prefix, identity, time.monotonic()):
                self.log.info(
                    "conda_env %s of user %s: unchanged since it passed", prefix, username
                )
                return
        try:
            await self.as_user.check_environment(
                username, prefix, dask_gateway_server_version, self.env_check_timeout
            )
        except UserError as exc:
            raise PublicException(str(exc)) from None
        cache.passed(username, prefix, identity, time.monotonic())

    def allowed_worker_count(self, cluster: Cluster, requested: object) -> int:
        """The worker count a cluster's heartbeat may set (see dgs_compat)."""
        others = [
            (c.config, c.count)
            for c in self.db.list_clusters(username=cluster.username)
            if c.name != cluster.name
        ]
        others += self.admissions.reserved(cluster.username)
        return capped_worker_count(self.limits, others, cluster.config, requested, cluster.count)
