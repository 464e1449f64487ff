"""Serving the gateway's Prometheus metrics (``/metrics``) on an admin address of its own,
and wiring them into the backend.

Not through the proxy: the proxy's port is the users', and the private API behind it
answers whatever the proxy forwards. The metrics get their own address
(``c.SlurmBackend.metrics_address``, loopback by default), which a site opens to its
Prometheus host only; per-user metrics also need a bearer token (``metrics_token``),
since every local account can connect to a loopback port. The server runs on the gateway's
own event loop, so a scrape reads the gateway's state between two of its steps, never in
the middle of one (prometheus_client's own server would read it from another thread).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from traitlets import Bool, Unicode
from traitlets.config import LoggingConfigurable

from .jobs import SlurmError
from .lifecycle import ClusterFacts
from .metrics import GatewayMetrics, StateCollector, failure_class, start_failure_class
from .slurm import JobInfo


def metrics_config_problem(address: str, per_user: bool, token: str) -> str | None:
    """What is wrong with the metrics settings (None: nothing): the address must be
    ``host:port``, and per-user metrics need a token."""
    if address:
        host, separator, port = address.rpartition(":")
        if not separator or not port.isdigit() or not 0 < int(port) < 65536:
            return f"metrics_address {address!r} is not host:port"
    if per_user and not token:
        return (
            "metrics_per_user needs metrics_token: every local account can read an "
            "unprotected metrics address, and per-user metrics name users"
        )
    return None


#: Seconds between attempts to listen on a metrics address someone else holds.
METRICS_RETRY_PERIOD = 30


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` listens on loopback only."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def authorized(header: str | None, token: str) -> bool:
    """Whether a request's ``Authorization`` header carries the token (any header if no
    token is set). Compared in constant time."""
    if not token:
        return True
    scheme, _, given = (header or "").partition(" ")
    # As bytes: compare_digest refuses str with non-ASCII characters (a header can carry any).
    given_bytes = given.strip().encode("utf-8", "surrogateescape")
    return scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, token.encode())


def metrics_app(metrics: GatewayMetrics, token: str) -> web.Application:
    """The aiohttp application answering ``GET /metrics``."""

    async def handler(request: web.Request) -> web.Response:
        if not authorized(request.headers.get("Authorization"), token):
            return web.Response(
                status=401, text="bearer token required\n", headers={"WWW-Authenticate": "Bearer"}
            )
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app


async def serve(app: web.Application, address: str) -> web.AppRunner:
    """Start serving ``app`` on ``host:port``; raises OSError if the address is taken."""
    host, _, port = address.rpartition(":")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host.strip("[]") or None, int(port)).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


class MetricsService(LoggingConfigurable):
    """The backend's metrics options and wiring. The backend provides ``runner``,
    ``tracker``, ``owners`` and ``db``, and calls :meth:`start_metrics` in its setup."""

    metrics_address = Unicode(
        "127.0.0.1:8002",
        help="""Address (host:port) serving Prometheus metrics at /metrics; "" for none.

        Its own address, not the proxy's (users' port): open it to your Prometheus host
        only, e.g. ":8002" behind a firewall. Loopback by default.""",
        config=True,
    )

    metrics_per_user = Bool(
        False,
        help="""Also export active clusters and workers per user (the ``user`` label).

        Off by default: every user adds a time series to each of these metrics (label
        cardinality grows with the number of users), and the metrics then name users,
        so this needs ``metrics_token``.""",
        config=True,
    )

    metrics_token = Unicode(
        "",
        help="""A bearer token /metrics requires ("" for none).

        If set, /metrics answers only requests with ``Authorization: Bearer <token>``
        (Prometheus: ``authorization: {credentials_file: ...}``). Required with
        ``metrics_per_user``: any local account can connect to a loopback address.""",
        config=True,
    )

    metrics: GatewayMetrics
    _metrics_server: web.AppRunner | None = None

    async def start_metrics(self) -> None:
        """Create the metrics, feed them from the runner and tracker, and serve them."""
        problem = metrics_config_problem(
            self.metrics_address, self.metrics_per_user, self.metrics_token
        )
        if problem:
            raise ValueError(problem)
        self.metrics = GatewayMetrics()
        self.metrics.add_state(
            StateCollector(
                lambda: list(self.db.name_to_cluster.values()),
                self.health.parts.slurm_parts,  # the one record /api/health reads too
                self.metrics_per_user,
            )
        )
        self.runner.on_command = self.metrics.command_done
        self.tracker.on_running = self._job_running
        if not self.metrics_address:
            return
        if not self.metrics_token and not is_loopback(self.metrics_address):
            self.log.warning(
                "Metrics at %s without a token: firewall it to your Prometheus host",
                self.metrics_address,
            )
        self.task_pool.spawn(self._serve_metrics(metrics_app(self.metrics, self.metrics_token)))

    async def _serve_metrics(self, app: web.Application) -> None:
        """Serve the metrics; while the address is taken, say so and retry. Metrics never
        keep the gateway from starting: a free port anyone may bind (loopback's are) would
        otherwise let any local account stop it from coming back."""
        while True:
            try:
                self._metrics_server = await serve(app, self.metrics_address)
            except OSError as exc:
                self.log.error(
                    "No metrics: cannot listen on %s (%s); retrying every %d s",
                    self.metrics_address,
                    exc.strerror or exc,
                    METRICS_RETRY_PERIOD,
                )
                await asyncio.sleep(METRICS_RETRY_PERIOD)
            else:
                self.log.info("Prometheus metrics at http://%s/metrics", self.metrics_address)
                return

    def _job_running(self, job) -> None:
        owner = self.owners.get(job.job_id)
        if owner is not None:
            self.metrics.job_running(job, "scheduler" if owner.worker is None else "worker")

    def count_failure(self, facts: ClusterFacts, job: JobInfo) -> None:
        """Count a cluster's failure by its reason class (once: when it is explained)."""
        self.metrics.cluster_failed(failure_class(facts, job))

    def count_start_failure(self, error: Exception, public: tuple[type, ...]) -> None:
        """Count a cluster that could not be submitted (``public``: users' errors)."""
        self.metrics.cluster_failed(start_failure_class(error, (SlurmError,), public))

    async def do_cleanup(self) -> None:
        if self._metrics_server is not None:
            await self._metrics_server.cleanup()
        await super().do_cleanup()
