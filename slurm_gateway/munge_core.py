"""Munge authentication, the pure parts: unmunge's output, the decision, origins, nonces, logs.

Nothing here runs a command or touches the network; :mod:`slurm_gateway.munge_auth` does.
"""

from __future__ import annotations

import heapq
import logging
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

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
# munge's armor: "MUNGE:", base64 (padding at the end only), ":". The smallest credential munge
# makes (no payload, no cipher, md5 MAC) has 84 base64 characters; real ones have 130 and more.
MIN_CREDENTIAL_BASE64 = 64
_CREDENTIAL = re.compile(rf"MUNGE:[A-Za-z0-9+/]{{{MIN_CREDENTIAL_BASE64},}}={{0,2}}:")
# Printable ASCII without space or braces (dask_gateway formats config values as templates).
_AUDIENCE_CHARS = r"[\x21-\x7a|~]{1,255}"
AUDIENCE = re.compile(_AUDIENCE_CHARS)
_PAYLOAD = re.compile(
    rf"slurm-gateway:({_AUDIENCE_CHARS})\ntime=(\d{{1,12}})\nnonce=([0-9a-f]{{32}})"
)
_TERMINAL_ESCAPE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[@-_])")


class UnmungeOutputError(ValueError):
    """unmunge's output is not what unmunge prints: truncated, or not from unmunge."""


class NonceMemoryFull(RuntimeError):
    """The nonce memory holds ``max_entries`` unexpired nonces: no room for another."""


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
    or unmunge's default ``name (number)``. Raises :class:`UnmungeOutputError`, whose message
    quotes nothing of ``out`` (it may be logged)."""
    head, blank, payload = out.partition("\n\n")
    if not blank:
        raise UnmungeOutputError("no end of metadata (truncated output?)")
    values: dict[str, int] = {}
    for number, line in enumerate(head.split("\n"), 1):
        match = _META_LINE.fullmatch(line)
        if not match or match[1] not in _KNOWN_KEYS:
            raise UnmungeOutputError(f"line {number} is not an unmunge metadata line")
        key, value = match[1], match[2].strip()
        if key in values:
            raise UnmungeOutputError(f"{key} given twice")
        parsed = _META_NUMBER.fullmatch(value)
        values[key] = int(parsed[1] or parsed[2]) if parsed else -1
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


def credential_problem(credential: str, max_size: int) -> str:
    """Why ``credential`` cannot be a munge credential (cheap, before unmunge), or ""."""
    if len(credential) > max_size:
        return f"malformed credential ({len(credential)} bytes, more than max_credential_size)"
    if not _CREDENTIAL.fullmatch(credential):
        return f"malformed credential ({len(credential)} bytes, not munge's armor)"
    return ""


def normalize_origin(url: str) -> str:
    """``scheme://host:port`` of an http(s) origin: lowercase, the port explicit, IPv6 hosts
    in brackets. ValueError if ``url`` has more (user info, a path, a query) or less."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if scheme not in ("http", "https") or not host:
        raise ValueError(f"{url!r} is not an origin such as https://login1.example.org:8443")
    if "@" in parts.netloc or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{url!r}: an origin is scheme://host:port, nothing more")
    if port is None:
        port = 443 if scheme == "https" else 80
    if ":" in host:
        host = f"[{host}]"
    origin = f"{scheme}://{host}:{port}"
    if not AUDIENCE.fullmatch(origin):
        raise ValueError(f"{url!r}: printable ASCII without spaces or braces only")
    return origin


def decide(
    cred: Unmunged, *, service_uid: int, audiences: Collection[str], now: float, max_age: float
) -> Verdict:
    """Accept a decoded credential (the uid it vouches for) or say why not. Pure.

    ``audiences``: the gateway's public origins; the payload must name one of them."""
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
    if match[1] not in audiences:
        return Verdict(
            reason=f"made for another gateway: {match[1]!r} is not in "
            f"MungeAuthenticator.audiences {sorted(audiences)}"
        )
    if abs(int(match[2]) - cred.encode_time) > max_age:
        return Verdict(reason="payload time disagrees with munge's encode time")
    return Verdict(uid=cred.uid, nonce=match[3])


class NonceMemory:
    """The nonces of accepted credentials, each kept until its credential is too old.

    munged's replay cache already refuses a credential decoded twice; this also holds across a
    restart of munged. A credential is accepted until ``max(now, encode_time) + max_age``
    (encoded up to ``max_age`` in the future is accepted), so its nonce is kept that long.
    At most ``max_entries`` nonces: unexpired ones are never evicted, :meth:`first_use` raises
    :class:`NonceMemoryFull` instead (the gateway answers 503)."""

    def __init__(self, max_age: float, max_entries: int = 100_000) -> None:
        self.max_age = max_age
        self.max_entries = max_entries
        self._seen: dict[str, float] = {}
        self._expiries: list[tuple[float, str]] = []  # a heap, one entry per nonce in _seen

    def first_use(self, nonce: str, now: float, encode_time: float) -> bool:
        """Remember ``nonce``; False if it is remembered already."""
        while self._expiries and self._expiries[0][0] < now:
            _, expired = heapq.heappop(self._expiries)
            del self._seen[expired]
        if nonce in self._seen:
            return False
        if len(self._seen) >= self.max_entries:
            raise NonceMemoryFull(f"{len(self._seen)} unexpired nonces")
        expiry = max(now, encode_time) + self.max_age
        self._seen[nonce] = expiry
        heapq.heappush(self._expiries, (expiry, nonce))
        return True


def sanitize(text: str, limit: int = 200) -> str:
    """``text`` made one harmless log line: no terminal escapes, no control or non-ASCII
    characters (\\r, \\n included), whitespace collapsed, at most ``limit`` characters."""
    text = _TERMINAL_ESCAPE.sub("", text[: 4 * limit])
    text = " ".join("".join(c if " " <= c <= "~" else " " for c in text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def refusal_kind(reason: str) -> str:
    """The kind of a refusal reason, for rate limiting: what comes before any ``:`` or ``(``
    (where reasons put what the client chose), numbers made ``N``."""
    return re.sub(r"\d+", "N", re.split(r"[:(]", reason, maxsplit=1)[0]).strip()[:80]


class RateLimitedLog:
    """At most one WARNING per kind every ``interval`` seconds; the ones held back are counted
    and the count goes with the next WARNING of that kind. At most ``max_kinds`` kinds (more
    share one), so a flood of refusals cannot fill the log or the memory."""

    def __init__(
        self,
        log: logging.Logger,
        interval: float = 10.0,
        max_kinds: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.interval = interval
        self.max_kinds = max_kinds
        self.clock = clock
        self._kinds: dict[str, tuple[float, int]] = {}  # kind: (last logged, held back since)

    def warning(self, kind: str, message: str) -> None:
        """Log ``message`` unless a WARNING of ``kind`` went out less than ``interval`` ago."""
        now = self.clock()
        if kind not in self._kinds and len(self._kinds) >= self.max_kinds:
            kind = "(other kinds)"
        last, held = self._kinds.get(kind, (None, 0))
        if last is not None and now - last < self.interval:
            self._kinds[kind] = (last, held + 1)
            return
        self._kinds[kind] = (now, 0)
        if held:
            message += f" [and {held} more like it in the last {now - last:.0f} s, not logged]"
        self.log.warning("%s", message)
