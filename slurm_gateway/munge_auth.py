"""Munge authentication: the user is the uid munge vouches for, never a name the client sends.

The client (``slurm_gateway_client.MungeAuth``, in ``client/``) runs
``munge --restrict-uid=<service uid>`` with a payload binding the credential to this gateway
(:func:`payload_problem`) and sends ``Authorization: Munge <credential>``. The gateway decodes
it with its own ``unmunge`` (as the service account, bounded in time and output), parses the
output (:func:`parse_unmunge_output`), decides (:func:`decide`) and maps the uid to its name.

Refused with 401 and the reason in the log: credentials munge does not decode (malformed,
foreign key, altered), replayed (munged's replay cache, and a nonce remembered here for
``max_age``), expired (munge's TTL, and ``max_age`` on munge's encode time), not restricted
to the gateway's service account, or whose payload names another gateway.
"""

from __future__ import annotations

import os
import pwd
import re
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import NoReturn

from aiohttp import web
from dask_gateway_server.auth import Authenticator
from dask_gateway_server.models import User
from traitlets import Float, Integer, Unicode, default, validate

from .transport import LocalSudoRunner

# munge's status codes (munge.h) the gateway tells apart.
STATUS_SUCCESS = 0
STATUS_EXPIRED = 15
STATUS_REWOUND = 16
STATUS_REPLAYED = 17
STATUS_UNAUTHORIZED = 18
# munged unreachable or failing (not the client's fault): 503, not 401.
UNAVAILABLE_STATUSES = {1, 4, 5, 6, 7}  # snafu, overflow, no memory, socket, timeout
_STATUS_REASONS = {
    STATUS_EXPIRED: "expired credential (munge's TTL)",
    STATUS_REWOUND: "rewound credential (encoded in the future)",
    STATUS_REPLAYED: "replayed credential (munged has decoded it before)",
    STATUS_UNAUTHORIZED: "credential restricted to another uid than the gateway's",
}

# The keys the gateway asks unmunge for (--numeric: numbers only, no name or host lookups).
UNMUNGE_KEYS = "STATUS,ENCODE_TIME,TTL,UID,UID_RESTRICTION,LENGTH"
_KNOWN_KEYS = set(UNMUNGE_KEYS.split(",")) | {
    *("ENCODE_HOST", "DECODE_TIME", "CIPHER", "MAC", "ZIP", "GID", "GID_RESTRICTION"),
}
_META_LINE = re.compile(r"([A-Z_]+):[ \t]+(\S.*)")
# "17", or "Replayed credential (17)", "alice (1001)", "2026-12-01 04:10:27 +0000 (1796098227)".
_META_NUMBER = re.compile(r"(\d+)|.*\((\d+)\)")
_CREDENTIAL = re.compile(r"MUNGE:[A-Za-z0-9+/=]+:")
# Printable ASCII without space or braces (dask_gateway formats config values as templates).
_AUDIENCE_CHARS = r"[\x21-\x7a|~]{1,255}"
_AUDIENCE = re.compile(_AUDIENCE_CHARS)
_PAYLOAD = re.compile(
    rf"slurm-gateway:({_AUDIENCE_CHARS})\ntime=(\d{{1,12}})\nnonce=([0-9a-f]{{32}})"
)
MAX_UNMUNGE_OUTPUT = 16384


class UnmungeOutputError(ValueError):
    """unmunge's output is not what unmunge prints: truncated, or not from unmunge."""


@dataclass(frozen=True)
class Unmunged:
    """What unmunge says about a credential. Fields it did not print are None."""

    status: int
    uid: int | None = None
    uid_restriction: int | None = None
    encode_time: int | None = None
    ttl: int | None = None
    payload: str = ""


@dataclass(frozen=True)
class Verdict:
    """The decision on a decoded credential: the uid munge vouches for, or why not."""

    uid: int | None = None
    nonce: str = ""
    reason: str = ""


def parse_unmunge_output(out: str) -> Unmunged:
    """Parse unmunge's output: ``KEY: value`` lines, a blank line, then the payload.

    Only what comes before the first blank line is metadata, and munge's metadata never holds
    one: a payload line such as ``UID: root (0)`` is payload. The payload must be exactly
    ``LENGTH`` bytes (unmunge adds no newline after it). Values may be numeric (``--numeric``)
    or unmunge's default ``name (number)``. Raises :class:`UnmungeOutputError`."""
    head, blank, payload = out.partition("\n\n")
    if not blank:
        raise UnmungeOutputError("no end of metadata (truncated output?)")
    values: dict[str, int] = {}
    for line in head.split("\n"):
        match = _META_LINE.fullmatch(line)
        if not match or match[1] not in _KNOWN_KEYS:
            raise UnmungeOutputError(f"not an unmunge metadata line: {line[:80]!r}")
        key, value = match[1], match[2].strip()
        if key in values:
            raise UnmungeOutputError(f"{key} given twice")
        number = _META_NUMBER.fullmatch(value)
        values[key] = int(number[1] or number[2]) if number else -1
    for key in ("STATUS", "LENGTH"):
        if values.get(key, -1) < 0:
            raise UnmungeOutputError(f"no {key}")
    if len(payload.encode()) != values["LENGTH"]:
        raise UnmungeOutputError(
            f"payload of {len(payload.encode())} bytes, LENGTH says {values['LENGTH']}"
        )
    fields = {k: (v if v >= 0 else None) for k, v in values.items()}
    return Unmunged(
        status=values["STATUS"],
        uid=fields.get("UID"),
        uid_restriction=fields.get("UID_RESTRICTION"),
        encode_time=fields.get("ENCODE_TIME"),
        ttl=fields.get("TTL"),
        payload=payload,
    )


def status_reason(status: int) -> str:
    """Why munge refused a credential, from its status code."""
    return _STATUS_REASONS.get(status, f"invalid credential (munge status {status})")


def decide(
    cred: Unmunged, *, service_uid: int, audience: str, now: float, max_age: float
) -> Verdict:
    """Accept a decoded credential (the uid it vouches for) or say why not. Pure."""
    if cred.status != STATUS_SUCCESS:
        return Verdict(reason=status_reason(cred.status))
    if cred.uid is None or cred.encode_time is None:
        return Verdict(reason="malformed: unmunge printed no UID or ENCODE_TIME")
    if cred.uid_restriction is None:
        return Verdict(reason="not restricted to the gateway's service account (--restrict-uid)")
    if cred.uid_restriction != service_uid:
        return Verdict(
            reason=f"restricted to uid {cred.uid_restriction}, not the gateway's {service_uid}"
        )
    age = now - cred.encode_time
    if age > max_age:
        return Verdict(reason=f"too old: encoded {age:.0f} s ago, max_age is {max_age:g} s")
    if age < -max_age:
        return Verdict(reason=f"encoded {-age:.0f} s in the future (clock skew?)")
    match = _PAYLOAD.fullmatch(cred.payload)
    if not match:
        return Verdict(reason="payload is not a slurm-gateway payload (old or foreign client?)")
    if match[1] != audience:
        return Verdict(reason=f"made for the gateway {match[1]!r}, this one is {audience!r}")
    if abs(int(match[2]) - cred.encode_time) > max_age:
        return Verdict(reason="payload time disagrees with munge's encode time")
    return Verdict(uid=cred.uid, nonce=match[3])


class NonceMemory:
    """The nonces of accepted credentials, each kept ``max_age`` seconds (bounded in number).

    munged's replay cache already refuses a credential decoded twice; this also holds across a
    restart of munged."""

    def __init__(self, max_age: float, max_entries: int = 100_000):
        self.max_age = max_age
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_use(self, nonce: str, now: float) -> bool:
        """Remember ``nonce``; False if it was seen within ``max_age``."""
        while self._seen and (
            len(self._seen) >= self.max_entries or next(iter(self._seen.values())) < now
        ):
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return False
        self._seen[nonce] = now + self.max_age
        return True


def default_audience() -> str:
    """This host's fully qualified name: what a client connecting by that name uses too."""
    return socket.getfqdn()


def resolve_account(account: str | int) -> int:
    """The uid of an account given by name or number. Raises KeyError if there is none."""
    if isinstance(account, int) or str(account).isdigit():
        return int(account)
    return pwd.getpwnam(str(account)).pw_uid


def _unauthorized(reason: str) -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(
        headers={"WWW-Authenticate": "Munge"}, reason=f"Munge authentication failed: {reason}"
    )


class MungeAuthenticator(Authenticator):
    """Authenticate users by munge credentials (``Authorization: Munge <credential>``).

    Clients use ``slurm_gateway_client.MungeAuth``; ``slurm-gateway client-config`` prints
    the matching ``gateway.auth`` of ``/etc/dask/gateway.yaml``. No password anywhere: the
    user is the uid munge vouches for."""

    service_account = Unicode(
        "slurmgw",
        help="""The account the gateway runs as (name or uid): clients restrict their
        credentials to it (munge --restrict-uid), and the gateway refuses any credential not
        restricted to its own uid. The gateway refuses to start if it runs as another account.""",
        config=True,
    )

    audience = Unicode(
        help="""The name binding credentials to this gateway (default: this host's fully
        qualified name). Clients put it in the credential's payload; a credential made for
        another gateway (another audience) is refused. Printable ASCII without spaces or braces.""",
        config=True,
    )

    max_age = Float(
        60,
        min=1,
        help="""Seconds a credential is accepted after munge encoded it (on top of munge's own
        TTL, 300 s by default). Clients make a fresh credential for each authentication.""",
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

    @default("audience")
    def _default_audience(self):
        return default_audience()

    @validate("audience")
    def _validate_audience(self, proposal):
        if not _AUDIENCE.fullmatch(proposal.value):
            raise ValueError(
                f"audience {proposal.value!r}: printable ASCII without spaces or braces"
            )
        return proposal.value

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._service_uid: int | None = None
        self._nonces = NonceMemory(self.max_age)
        self._runner = LocalSudoRunner(
            timeout=self.unmunge_timeout, max_output=MAX_UNMUNGE_OUTPUT, max_concurrent=16
        )

    async def setup(self, app: web.Application) -> None:
        """Check at startup that the gateway runs as ``service_account``."""
        self.service_uid()

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
        """The user munge vouches for; 401 (``WWW-Authenticate: Munge``) otherwise."""
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "munge":
            raise _unauthorized("no Munge credential")  # the client's first try: not logged
        credential = credential.strip()
        if len(credential) > self.max_credential_size or not _CREDENTIAL.fullmatch(credential):
            return self._refuse(request, f"malformed credential ({len(credential)} bytes)")
        cred = await self._unmunge(request, credential)
        now = time.time()
        verdict = decide(
            cred,
            service_uid=self.service_uid(),
            audience=self.audience,
            now=now,
            max_age=self.max_age,
        )
        if verdict.uid is None:
            return self._refuse(request, verdict.reason, cred.uid)
        if not self._nonces.first_use(verdict.nonce, now):
            return self._refuse(request, "replayed credential (nonce seen before)", cred.uid)
        try:
            name = pwd.getpwuid(verdict.uid).pw_name
        except KeyError:
            return self._refuse(request, f"uid {verdict.uid} has no account here", cred.uid)
        self.log.info("Munge: authenticated uid %d as %s", verdict.uid, name)
        return User(name)

    async def _unmunge(self, request: web.Request, credential: str) -> Unmunged:
        """Decode ``credential`` with unmunge; 503 if munge cannot answer, 401 if it refuses."""
        argv = [self.unmunge, "--numeric", f"--keys={UNMUNGE_KEYS}"]
        result = await self._runner.run(argv, stdin=credential.encode() + b"\n")
        if result.stopped or result.returncode in UNAVAILABLE_STATUSES or result.returncode < 0:
            self.log.error("Munge authentication unavailable: %s", result.summary())
            raise web.HTTPServiceUnavailable(reason="munge is unavailable on the gateway")
        if not result.stdout:  # refused before decoding: unmunge says why on stderr
            detail = (result.stderr.strip().splitlines() or [""])[-1][:200]
            return self._refuse(request, status_reason(result.returncode), detail=detail)
        try:
            cred = parse_unmunge_output(result.stdout)
        except UnmungeOutputError as exc:
            return self._refuse(request, "unreadable unmunge output", detail=str(exc))
        if cred.status != result.returncode:
            return self._refuse(request, f"unmunge exited {result.returncode}, STATUS says else")
        return cred

    def _refuse(
        self, request: web.Request, reason: str, uid: int | None = None, detail: str = ""
    ) -> NoReturn:
        """Log why (never the credential) and raise 401 with ``reason`` (``detail``: log only,
        it may hold what unmunge printed)."""
        who = "" if uid is None else f" (uid {uid})"
        why = f"{reason}: {detail}" if detail else reason
        self.log.warning("Munge authentication refused from %s%s: %s", request.remote, who, why)
        raise _unauthorized(reason)
