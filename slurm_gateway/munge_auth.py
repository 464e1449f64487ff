"""Munge authentication: the user is the uid munge vouches for, never a name the client sends.

The client (``slurm_gateway_client.MungeAuth``, in ``client/``) runs ``munge
--restrict-uid=<service uid> --ttl=<seconds>`` with a payload naming the origin
(``scheme://host:port``) it actually contacts, and sends ``Authorization: Munge <credential>``.
The gateway decodes it with its own ``unmunge`` (as the service account, bounded in time,
output and concurrency), parses the output, decides (the pure parts are in
:mod:`slurm_gateway.munge_core`) and maps the uid to its name.

Refused with 401 and the reason in the log (rate limited): credentials that are not munge's
armor or that munge does not decode (foreign key, altered), replayed (munged's replay cache,
and a nonce remembered here while the credential is young enough), expired (munge's TTL, and
``max_age`` on munge's encode time), not restricted to the gateway's service account, whose
payload names an origin not in ``audiences``, or too large. What this does not stop: a
credential sent to whoever answers at one of ``audiences`` is only as safe as that origin, so
use TLS and a port only the service can bind (README, "Connect your site's users", Munge).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import time
import weakref
from typing import Any, NoReturn

from aiohttp import web
from dask_gateway_server.auth import Authenticator
from dask_gateway_server.models import User
from traitlets import Float, Integer, List, Unicode, validate

from .munge_core import (
    UNAVAILABLE_STATUSES,
    UNMUNGE_KEYS,
    NonceMemory,
    NonceMemoryFull,
    RateLimitedLog,
    Unmunged,
    UnmungeOutputError,
    Verdict,
    credential_problem,
    decide,
    normalize_origin,
    parse_unmunge_output,
    refusal_kind,
    sanitize,
    status_reason,
)
from .transport import LocalSudoRunner

__all__ = [
    "MungeAuthenticator",
    "NonceMemory",
    "Unmunged",
    "UnmungeOutputError",
    "Verdict",
    "decide",
    "normalize_origin",
    "parse_unmunge_output",
    "resolve_account",
]

# Real outputs are < 400 bytes (the payload < 320): more is a credential's inflated payload.
MAX_UNMUNGE_OUTPUT = 4096
AUDIENCES_EXAMPLE = 'c.MungeAuthenticator.audiences = ["https://login1.example.org:8443"]'


def resolve_account(account: str | int) -> int:
    """The uid of an account given by name or number. Raises KeyError if there is none."""
    if isinstance(account, int) or str(account).isdigit():
        return int(account)
    return pwd.getpwnam(str(account)).pw_uid


def account_name(uid: int) -> str | None:
    """The name of ``uid``, if the name maps back to the same uid (NSS sources can disagree)."""
    try:
        name = pwd.getpwuid(uid).pw_name
        return name if pwd.getpwnam(name).pw_uid == uid else None
    except KeyError:
        return None


def _unauthorized(reason: str) -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(
        headers={"WWW-Authenticate": "Munge"}, reason=f"Munge authentication failed: {reason}"
    )


class MungeAuthenticator(Authenticator):
    """Authenticate users by munge credentials (``Authorization: Munge <credential>``).

    Clients use ``slurm_gateway_client.MungeAuth``; ``slurm-gateway client-config`` prints
    the matching ``gateway`` section of ``/etc/dask/gateway.yaml``. No password anywhere: the
    user is the uid munge vouches for."""

    service_account = Unicode(
        "slurmgw",
        help="""The account the gateway runs as (name or uid): clients restrict their
        credentials to it (munge --restrict-uid), and the gateway refuses any credential not
        restricted to its own uid. The gateway refuses to start if it runs as another account.""",
        config=True,
    )

    audiences = List(
        Unicode(),
        help="""The public origins of the gateway (scheme://host:port, as clients reach the
        proxy), e.g. ["https://login1.example.org:8443"]. Required: the gateway refuses to
        start without. A client binds each credential to the origin it contacts; a credential
        made for another origin (another gateway, or a server squatting a port) is refused.""",
        config=True,
    )

    max_age = Float(
        60,
        min=1,
        help="""Seconds a credential is accepted after munge encoded it (on top of munge's own
        TTL, which the client sets to 60 s). Clients make a fresh credential for each
        authentication.""",
        config=True,
    )

    unmunge = Unicode(
        "unmunge",
        help="Path of the unmunge command (looked up in /usr/local/bin:/usr/bin:/bin).",
        config=True,
    )

    unmunge_timeout = Float(
        10, min=0.1, help="Seconds unmunge may take before it is stopped (503).", config=True
    )

    max_credential_size = Integer(
        4096,
        min=256,
        help="Longest credential accepted, in bytes; longer ones are refused without unmunge.",
        config=True,
    )

    max_concurrent_decodes = Integer(
        16,
        min=1,
        help="""unmunge commands running at once, all requests together. Further requests wait
        for a free slot, at most decode_wait_timeout seconds.""",
        config=True,
    )

    decode_wait_timeout = Float(
        5,
        min=0,
        help="""Seconds a request waits for a free unmunge slot (max_concurrent_decodes)
        before it is answered 503 (busy, retry).""",
        config=True,
    )

    @validate("audiences")
    def _validate_audiences(self, proposal: dict[str, Any]) -> list[str]:
        origins = []
        for url in proposal["value"]:
            try:
                origin = normalize_origin(url)
            except ValueError as exc:
                raise ValueError(f"MungeAuthenticator.audiences: {exc}") from None
            if origin not in origins:
                origins.append(origin)
        return origins

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._service_uid: int | None = None
        self._nonces = NonceMemory(self.max_age)
        self._refusals = RateLimitedLog(self.log)
        self._runner = LocalSudoRunner(
            parent=self,
            timeout=self.unmunge_timeout,
            max_output=MAX_UNMUNGE_OUTPUT,
            max_concurrent=self.max_concurrent_decodes,
        )
        # One semaphore per event loop: an asyncio.Semaphore belongs to the loop it is used on.
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
        self._slots = weakref.WeakKeyDictionary()

    async def setup(self, app: web.Application | None) -> None:
        """Check at startup that the gateway runs as ``service_account`` and has audiences."""
        self.service_uid()
        if not self.audiences:
            raise ValueError(
                "MungeAuthenticator.audiences is not set: set it to the origin(s) clients reach "
                f"the gateway's proxy at, e.g. {AUDIENCES_EXAMPLE}"
            )

    def service_uid(self) -> int:
        """The gateway's own uid, which must be ``service_account``'s (else ValueError)."""
        if self._service_uid is None:
            try:
                expected = resolve_account(self.service_account)
            except KeyError:
                raise ValueError(
                    f"MungeAuthenticator.service_account {self.service_account!r}: no such user"
                ) from None
            if expected != os.geteuid():
                raise ValueError(
                    f"MungeAuthenticator.service_account is {self.service_account!r} (uid "
                    f"{expected}) but the gateway runs as uid {os.geteuid()}: set it to the "
                    "account the gateway runs as (clients restrict their credentials to it)"
                )
            self._service_uid = expected
        return self._service_uid

    async def authenticate(self, request: web.Request) -> User:
        """The user munge vouches for; 401 (``WWW-Authenticate: Munge``) otherwise, 503 when
        munge cannot answer or the gateway is too busy to ask it."""
        now = time.time()  # before any wait: queueing must not age a credential
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "munge":
            raise _unauthorized("no Munge credential")  # the client's first try: not logged
        credential = credential.strip()
        problem = credential_problem(credential, self.max_credential_size)
        if problem:
            self._refuse(request, problem)
        cred = await self._unmunge(request, credential)
        verdict = decide(
            cred,
            service_uid=self.service_uid(),
            audiences=self.audiences,
            now=now,
            max_age=self.max_age,
        )
        if verdict.uid is None:
            self._refuse(request, verdict.reason, cred.uid)
        encode_time = now if cred.encode_time is None else cred.encode_time
        try:
            if not self._nonces.first_use(verdict.nonce, now, encode_time):
                self._refuse(request, "replayed credential (nonce seen before)", cred.uid)
        except NonceMemoryFull:
            self._unavailable("busy: too many credentials within max_age (nonce memory full)", True)
        name = await asyncio.to_thread(account_name, verdict.uid)
        if name is None:
            self._refuse(request, f"uid {verdict.uid} has no account here (or NSS disagrees)")
        self.log.info("Munge: authenticated uid %d as %s", verdict.uid, name)
        return User(name)

    async def _unmunge(self, request: web.Request, credential: str) -> Unmunged:
        """Decode ``credential`` with unmunge; 503 if munge cannot answer (or no slot frees in
        time), 401 if it refuses. Nothing unmunge prints is logged as it is."""
        argv = [self.unmunge, "--numeric", f"--keys={UNMUNGE_KEYS}"]
        loop = asyncio.get_running_loop()
        slots = self._slots.get(loop)
        if slots is None:
            slots = self._slots[loop] = asyncio.Semaphore(self.max_concurrent_decodes)
        try:
            await asyncio.wait_for(slots.acquire(), self.decode_wait_timeout)
        except TimeoutError:
            self._unavailable(
                f"busy: no free unmunge slot within {self.decode_wait_timeout:g} s", busy=True
            )
        try:
            result = await self._runner.run(argv, stdin=credential.encode() + b"\n")
        finally:
            slots.release()
        if result.truncated:
            self._refuse(request, "credential payload too large")
        if result.stopped or result.returncode in UNAVAILABLE_STATUSES or result.returncode < 0:
            why = result.stopped or f"exited {result.returncode}"
            last = (result.stderr.strip().splitlines() or [""])[-1]
            self._unavailable(f"unmunge {why}: {sanitize(last)}")
        if not result.stdout:  # refused before decoding: unmunge says why on stderr
            detail = sanitize((result.stderr.strip().splitlines() or [""])[-1])
            self._refuse(request, status_reason(result.returncode), detail=detail)
        try:
            cred = parse_unmunge_output(result.stdout)
        except UnmungeOutputError as exc:
            self._refuse(request, "unreadable unmunge output", detail=str(exc))
        if cred.status != result.returncode:
            self._refuse(request, f"unmunge exited {result.returncode}, STATUS says else")
        return cred

    def _unavailable(self, why: str, busy: bool = False) -> NoReturn:
        """503: munge cannot answer, or the gateway is too ``busy`` (``why``: logged, rate
        limited)."""
        self._refusals.warning(refusal_kind(why), f"Munge authentication unavailable: {why}")
        raise web.HTTPServiceUnavailable(
            reason="Munge authentication busy, retry"
            if busy
            else "Munge authentication unavailable: munge does not answer on the gateway"
        )

    def _refuse(
        self, request: web.Request, reason: str, uid: int | None = None, detail: str = ""
    ) -> NoReturn:
        """Log why (never the credential; rate limited per kind of reason) and raise 401 with
        ``reason`` (``detail``: log only, sanitized by the caller)."""
        who = "" if uid is None else f" (uid {uid})"
        why = f"{reason}: {detail}" if detail else reason
        self._refusals.warning(
            refusal_kind(reason),
            f"Munge authentication refused from {request.remote}{who}: {sanitize(why, 400)}",
        )
        raise _unauthorized(reason)
