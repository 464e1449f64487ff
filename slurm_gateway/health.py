"""What ``/api/health`` answers: SLURM (slurmctld), accounting (slurmdbd), the database and
the proxy, each with a status and a message naming what fails.

A load balancer may ask every few seconds: no request reaches slurmctld. SLURM's parts are
judged from what the backend's poller already learns (its ``squeue`` and ``sacct`` go
through :meth:`HealthMonitor.observing`); only when the poller asked nothing for a poll
period (no jobs to track) does the monitor ask itself, with the cheapest RPC there is
(``scontrol ping``; for accounting a one-job ``sacct``, at most every
:data:`ACCOUNTING_PROBE_PERIOD` seconds). The proxy is probed once per poll period; the
database at each request (``SELECT 1``, bounded, one at a time).

Statuses: ``pass``; ``warn`` (degraded, still serving: accounting down, not checked yet);
``fail`` (HTTP 503: slurmctld, the database or the proxy does not answer).

Anyone who reaches the gateway may ask, so a message is one of a few fixed texts naming
the failing part and where the admin finds more, never what a part said (a socket path, a
database URL, an SSH target, SLURM's stderr): that is kept by the one
:class:`~slurm_gateway.availability.Availability` record (which the metrics read too),
logged, and shown to admins by ``slurm-gateway health`` (:meth:`HealthMonitor.admin_report`,
over the admin channel).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import sqlalchemy as sa

from .availability import SLOW_ANSWER, Availability, Observation, hanging_for, is_due
from .slurm import sacct_command
from .transport import CommandResult

PASS, WARN, FAIL = "pass", "warn", "fail"
_RANK = {PASS: 0, WARN: 1, FAIL: 2}

#: Seconds between the monitor's own accounting probes when the poller ran no sacct.
ACCOUNTING_PROBE_PERIOD = 60.0
#: Seconds the proxy and the database have to answer a probe.
PROBE_TIMEOUT = 5.0
#: What a failing part's public message points the admin to.
SEE_LOG = "see the gateway log"

Run = Callable[..., Awaitable[CommandResult]]


@dataclass(frozen=True)
class Check:
    status: str
    message: str

    def as_json(self) -> dict:
        return {"status": self.status, "message": self.message}


# -- decisions ------------------------------------------------------------------------------


def slurm_check(
    seen: Observation | None, pending_since: float | None, now: float, period: float
) -> Check:
    """slurmctld: failing if its last answer was a failure, or a command has waited for it
    too long (:func:`~slurm_gateway.availability.hanging_for`); a warning if unheard of
    for 3 periods."""
    hanging = hanging_for(pending_since, now, period)
    if hanging is not None:
        return Check(FAIL, f"slurmctld has not answered for {hanging:.0f} s; {SEE_LOG}")
    if seen is None:
        return Check(WARN, "slurmctld not checked yet")
    if not seen.ok:
        return Check(FAIL, f"slurmctld does not answer; {SEE_LOG}")
    age = now - seen.at
    if age > 3 * period + max(SLOW_ANSWER, 2 * period):
        return Check(WARN, f"slurmctld last answered {age:.0f} s ago; not checked since")
    return Check(PASS, f"slurmctld answered {age:.0f} s ago")


def accounting_check(seen: Observation | None, now: float) -> Check:
    """slurmdbd (sacct): a warning when it fails, since clusters keep running without it
    (final job states then come from squeue alone)."""
    if seen is None:
        return Check(WARN, "accounting (sacct) not checked yet")
    if not seen.ok:
        return Check(
            WARN,
            "accounting (slurmdbd) does not answer; final job states come from squeue "
            f"alone; {SEE_LOG}",
        )
    return Check(PASS, f"sacct answered {now - seen.at:.0f} s ago")


def probed_check(name: str, seen: Observation | None) -> Check:
    """The database or the proxy, from its latest probe."""
    if seen is None:
        return Check(WARN, f"{name} not checked yet")
    if not seen.ok:
        return Check(FAIL, f"{name} does not answer; {SEE_LOG}")
    return Check(PASS, f"{name} answers")


def overall(checks: dict[str, Check]) -> str:
    """The worst status of the checks."""
    return max((c.status for c in checks.values()), key=_RANK.__getitem__, default=PASS)


def health_body(checks: dict[str, Check]) -> dict:
    """The JSON of ``/api/health`` (HTTP 503 when its ``status`` is ``fail``)."""
    return {"status": overall(checks), "checks": {k: c.as_json() for k, c in checks.items()}}


def ping_answer(result: CommandResult) -> tuple[bool, str]:
    """``scontrol ping``: ``Slurmctld(primary) at HOST is UP`` (each controller a line)."""
    text = (result.stdout.strip() or result.stderr.strip()).replace("\n", " | ")[:500]
    if not result.ok or "DOWN" in result.stdout or "UP" not in result.stdout:
        return False, f"scontrol ping: {text or result.summary()}"
    return True, text


def command_answer(result: CommandResult) -> tuple[bool, str]:
    """A SLURM command's answer as an observation's ``(ok, message)``."""
    return (True, "answered") if result.ok else (False, result.summary()[:500])


# -- the monitor ------------------------------------------------------------------------------


class HealthMonitor:
    """Feeds the gateway's :class:`~slurm_gateway.availability.Availability` (``parts``)
    from the poller's commands and its own probes; :meth:`report` is the body of
    ``/api/health``, :meth:`admin_report` the same with the details, for admins."""

    def __init__(
        self,
        run: Run,
        *,
        scontrol: str,
        squeue: str,
        sacct: str,
        period: float,
        proxy_url: str,
        gateway_url: str,
        engine: sa.engine.Engine,
        log: logging.Logger,
    ):
        self._run = run
        self._scontrol, self._squeue, self._sacct = scontrol, squeue, sacct
        self.period = period
        self.proxy_url = proxy_url
        self.gateway_url = gateway_url
        self._serving = False  # the gateway's own API listens (the proxy forwards there)
        self._engine = engine
        self._log = log
        self.parts = Availability(period, log)
        self._db_probe: asyncio.Future | None = None

    @classmethod
    def of(cls, backend) -> HealthMonitor:
        """The monitor of a :class:`~slurm_gateway.backend.SlurmBackend` (after its setup
        made the proxy, the database and the runner)."""
        proxy = backend.proxy
        host, _, port = proxy.address.rpartition(":")
        if host in ("", "0.0.0.0", "[::]", "::"):
            host = "127.0.0.1"
        scheme = "https" if proxy.tls_cert else "http"
        return cls(
            backend.runner.run,
            scontrol=backend.scontrol,
            squeue=backend.squeue,
            sacct=backend.sacct,
            period=backend.slurm_poll_period,
            proxy_url=f"{scheme}://{host}:{port}{proxy.prefix}/api/version",
            gateway_url=f"{proxy.gateway_url}/api/version",
            engine=backend.db.db,
            log=backend.log,
        )

    def _part(self, argv: list[str]) -> str | None:
        program = argv[0] if argv else ""
        if program in (self._squeue, self._scontrol):
            return "slurm"
        return "accounting" if program == self._sacct else None

    def observing(self, run: Run) -> Run:
        """``run``, noting what each squeue, scontrol and sacct it runs answered."""

        async def observed(argv: list[str], **kwargs) -> CommandResult:
            return await self._observe(run, argv, kwargs, command_answer)

        return observed

    async def _observe(self, run: Run, argv: list[str], kwargs: dict, answer) -> CommandResult:
        part = self._part(argv)
        if part == "slurm":
            with self.parts.waiting_on_slurm():
                result = await run(argv, **kwargs)
        else:
            result = await run(argv, **kwargs)
        if part:
            self.parts.note(part, *answer(result))
        return result

    async def refresh(self) -> None:
        """Probe what the poller has not heard of for a period; probe the proxy."""
        now = time.monotonic()
        probes = [self._probe_proxy()]
        seen = self.parts.seen
        if is_due(seen.get("slurm"), now, self.period) and not self.parts.slurm_busy:
            probes.append(self._probe_slurm())
        if is_due(seen.get("accounting"), now, max(self.period, ACCOUNTING_PROBE_PERIOD)):
            probes.append(self._probe_accounting())
        await asyncio.gather(*probes)

    async def run_forever(self) -> None:
        """:meth:`refresh` every poll period, the first at once."""
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                self._log.warning("Error while checking health", exc_info=True)
            await asyncio.sleep(self.period)

    async def _probe_slurm(self) -> None:
        await self._observe(self._run, [self._scontrol, "ping"], {}, ping_answer)

    async def _probe_accounting(self) -> None:
        await self._observe(self._run, sacct_command(["1"], self._sacct), {}, command_answer)

    async def _probe_proxy(self) -> None:
        # Until the gateway's API listens (setup still running), the proxy cannot route
        # to it: the proxy stays "not checked yet", not failing.
        if not self._serving:
            self._serving, _ = await http_answers(self.gateway_url, PROBE_TIMEOUT)
            if not self._serving:
                return
        self.parts.note("proxy", *await http_answers(self.proxy_url, PROBE_TIMEOUT))

    async def _probe_database(self) -> None:
        if self._db_probe is None or self._db_probe.done():
            loop = asyncio.get_running_loop()
            self._db_probe = loop.run_in_executor(None, database_answers, self._engine)
        try:
            ok, message = await asyncio.wait_for(asyncio.shield(self._db_probe), PROBE_TIMEOUT)
        except TimeoutError:
            ok, message = False, f"the database did not answer within {PROBE_TIMEOUT:g} s"
        self.parts.note("database", ok, message)

    def checks(self) -> dict[str, Check]:
        """Each part's public status and fixed message, from what is known now."""
        now, seen = time.monotonic(), self.parts.seen
        pending = self.parts.pending_since()
        return {
            "slurm": slurm_check(seen.get("slurm"), pending, now, self.period),
            "accounting": accounting_check(seen.get("accounting"), now),
            "database": probed_check("database", seen.get("database")),
            "proxy": probed_check("proxy", seen.get("proxy")),
        }

    async def report(self) -> dict:
        """The body of ``/api/health``; only the database is asked now."""
        await self._probe_database()
        return health_body(self.checks())

    async def admin_report(self) -> dict:
        """:meth:`report` with, for each part, what it last said (``detail``) and how many
        seconds ago (``age``): for admins only (the admin channel)."""
        body = await self.report()
        now = time.monotonic()
        for part, check in body["checks"].items():
            seen = self.parts.seen.get(part)
            if seen is not None:
                check.update(detail=seen.detail, age=round(now - seen.at, 1))
        return body


def database_answers(engine: sa.engine.Engine) -> tuple[bool, str]:
    """``SELECT 1`` on the gateway's database (blocking: run it in a thread)."""
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except Exception as exc:
        return False, f"the database does not answer: {str(exc).splitlines()[0][:300]}"
    return True, f"{engine.url.get_backend_name()} answers"


@functools.cache
def _unverified_tls() -> ssl.SSLContext:
    """One TLS context for every probe: making one loads the system's CA store, 30-40 ms
    of the event loop (measured on the dev cluster)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def http_answers(url: str, timeout: float) -> tuple[bool, str]:
    """Whether ``url`` answers 200 (the gateway's ``/api/version`` through the proxy: the
    proxy runs and routes to the gateway). TLS is not verified: nothing secret is sent,
    and the proxy's certificate names the public host, not the loopback address."""
    context = _unverified_tls()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.get(url, ssl=context, allow_redirects=False) as response:
                status = response.status
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return False, f"the proxy does not answer at {url}: {exc!r}"[:500]
    if status != 200:
        return False, f"the proxy answers {url} with HTTP {status} (not routing to the gateway?)"
    return True, f"the proxy answers at {url}"
