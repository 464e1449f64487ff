"""Munge authentication for the stock dask_gateway client of a slurm-gateway.

``/etc/dask/gateway.yaml`` (printed by ``slurm-gateway client-config``)::

    gateway:
      address: https://login1.example.org:8443
      auth:
        type: slurm_gateway_client.MungeAuth
        kwargs: {service_account: slurmgw}

On the gateway's 401, :class:`MungeAuth` runs ``munge --restrict-uid=<service account>
--ttl=<ttl>`` with a payload naming the origin it contacted (``scheme://host:port`` of the URL
that answered 401), the time and a random nonce, and sends ``Authorization: Munge
<credential>``. Only the service account can decode it, once, within ``ttl`` seconds, and the
gateway accepts it only for one of its own origins. That origin is whoever answers there: the
credential goes in clear over http, so it is sent over http only to a loopback address.
"""

from __future__ import annotations

import ipaddress
import pwd
import re
import secrets
import subprocess
import time
from typing import Any
from urllib.parse import urlsplit

from dask_gateway.auth import GatewayAuth

__all__ = ["MungeAuth", "MungeAuthError", "make_payload", "origin_of"]
__version__ = "0.2.0"

_CREDENTIAL = re.compile(r"MUNGE:[A-Za-z0-9+/=]+:")
# Printable ASCII without space or braces (dask_gateway formats config values as templates).
_AUDIENCE = re.compile(r"[\x21-\x7a|~]{1,255}")


class MungeAuthError(RuntimeError):
    """No credential made or sent: munge missing or failing, or the gateway's URL unsafe."""


def make_payload(audience: str, now: float | None = None) -> bytes:
    """The payload binding a credential to the gateway origin ``audience`` and this moment."""
    if not _AUDIENCE.fullmatch(audience):
        raise MungeAuthError(
            f"audience {audience!r}: must be printable ASCII without spaces or braces"
        )
    stamp = int(time.time() if now is None else now)
    return f"slurm-gateway:{audience}\ntime={stamp}\nnonce={secrets.token_hex(16)}".encode()


def origin_of(url: str) -> str:
    """``scheme://host:port`` of ``url`` (lowercase host, explicit port, IPv6 in brackets), as
    the gateway's ``MungeAuthenticator.audiences`` holds it."""
    try:
        parts = urlsplit(str(url))
        port = parts.port
    except ValueError as exc:
        raise MungeAuthError(f"not a URL: {exc}") from None
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if scheme not in ("http", "https") or not host:
        raise MungeAuthError(f"not an http(s) URL with a host: {str(url)[:200]!r}")
    if port is None:
        port = 443 if scheme == "https" else 80
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine by definition: localhost, 127.0.0.0/8, ::1."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _service_uid(account: str | int) -> int:
    if isinstance(account, int) or str(account).isdigit():
        return int(account)
    try:
        return pwd.getpwnam(str(account)).pw_uid
    except KeyError:
        raise MungeAuthError(
            f"no account {account!r} on this host: set gateway.auth.kwargs.service_account "
            "(in /etc/dask/gateway.yaml) to the gateway's service account, by name or uid"
        ) from None


def _one_line(data: bytes, limit: int = 300) -> str:
    text = "".join(c if " " <= c <= "~" else " " for c in data.decode("utf-8", "replace"))
    return " ".join(text.split())[:limit]


class MungeAuth(GatewayAuth):
    """Authenticate to a slurm-gateway with a munge credential bound to its origin.

    Parameters
    ----------
    service_account : str or int
        The account the gateway runs as (name or uid): the credential is restricted to it.
    munge : str
        The munge command (default: ``munge`` on the PATH).
    timeout : float
        Seconds munge may take.
    ttl : int
        The credential's time to live in seconds (``munge --ttl``), the gateway's ``max_age``
        at most.
    """

    def __init__(
        self,
        service_account: str | int = "slurmgw",
        munge: str = "munge",
        timeout: float = 10.0,
        ttl: int = 60,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.service_uid = _service_uid(service_account)
        self.munge = munge
        self.timeout = float(timeout)
        self.ttl = int(ttl)
        if self.ttl < 1:
            raise MungeAuthError(f"ttl {ttl!r}: at least 1 second")

    def pre_request(self, resp: Any) -> tuple[dict[str, str], None]:
        """A fresh credential for the origin that answered 401 (``resp``, an aiohttp
        response), to retry the request with."""
        return {"Authorization": "Munge " + self.credential(self.audience_for(resp))}, None

    def audience_for(self, resp: Any) -> str:
        """The origin the credential is for: the one that answered 401. MungeAuthError if a
        redirect led there from another origin (the retry goes to the first one), or if it is
        plain http to another host than this one."""
        origin = origin_of(str(resp.url))
        for earlier in getattr(resp, "history", ()) or ():
            if origin_of(str(earlier.url)) != origin:
                raise MungeAuthError(
                    f"{origin_of(str(earlier.url))} redirected to {origin}: no munge credential "
                    "is sent across origins; use the gateway's own address"
                )
        if origin.startswith("http://") and not is_loopback(urlsplit(origin).hostname or ""):
            raise MungeAuthError(
                f"refusing to send a munge credential over plain http to {origin}: whoever "
                "answers there could use it; use the gateway's https address (the proxy needs "
                "TLS: c.Proxy.tls_cert and c.Proxy.tls_key)"
            )
        return origin

    def credential(self, audience: str) -> str:
        """Run munge: a credential for the origin ``audience``, restricted to the service
        account, living ``ttl`` seconds."""
        argv = [self.munge, f"--restrict-uid={self.service_uid}", f"--ttl={self.ttl}"]
        try:
            done = subprocess.run(
                argv, input=make_payload(audience), capture_output=True, timeout=self.timeout
            )
        except FileNotFoundError:
            raise MungeAuthError(
                f"{self.munge!r} not found: install munge (the package of the same name) or "
                "set gateway.auth.kwargs.munge to its path"
            ) from None
        except subprocess.TimeoutExpired:
            raise MungeAuthError(f"munge did not answer within {self.timeout:g} s") from None
        except OSError as exc:
            raise MungeAuthError(f"cannot run {self.munge!r}: {exc}") from None
        out = done.stdout.decode("ascii", "replace").strip()
        if done.returncode != 0 or not _CREDENTIAL.fullmatch(out):
            detail = _one_line(done.stderr) or "no credential on its output"
            raise MungeAuthError(
                f"munge exited {done.returncode}: {detail} (is munged running on this host?)"
            )
        return out
