"""Munge authentication for the stock dask_gateway client of a slurm-gateway.

``/etc/dask/gateway.yaml``::

    gateway:
      auth:
        type: slurm_gateway_client.MungeAuth
        kwargs: {service_account: slurmgw, audience: login1.example.org}

On the gateway's 401, :class:`MungeAuth` runs ``munge --restrict-uid=<service account>`` with
a payload naming the gateway (``audience``), the time and a random nonce, and sends
``Authorization: Munge <credential>``. Only the gateway's service account can decode it, once,
within minutes; the gateway takes the user from the uid munge vouches for.
"""

from __future__ import annotations

import pwd
import re
import secrets
import subprocess
import time

from dask_gateway.auth import GatewayAuth

__all__ = ["MungeAuth", "MungeAuthError", "make_payload"]
__version__ = "0.1.0"

_CREDENTIAL = re.compile(r"MUNGE:[A-Za-z0-9+/=]+:")
# Printable ASCII without space or braces (dask_gateway formats config values as templates).
_AUDIENCE_CHARS = r"[\x21-\x7a|~]{1,255}"
_AUDIENCE = re.compile(_AUDIENCE_CHARS)


class MungeAuthError(RuntimeError):
    """munge could not make a credential: missing, munged not running, misconfigured."""


def make_payload(audience: str, now: float | None = None) -> bytes:
    """The payload binding a credential to the gateway ``audience`` and this moment."""
    if not _AUDIENCE.fullmatch(audience):
        raise MungeAuthError(
            f"audience {audience!r}: must be printable ASCII without spaces or braces"
        )
    stamp = int(time.time() if now is None else now)
    return f"slurm-gateway:{audience}\ntime={stamp}\nnonce={secrets.token_hex(16)}".encode()


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


class MungeAuth(GatewayAuth):
    """Authenticate to a slurm-gateway with a munge credential.

    Parameters
    ----------
    service_account : str or int
        The account the gateway runs as (name or uid): the credential is restricted to it.
    audience : str, optional
        The gateway's audience (``MungeAuthenticator.audience``); default: the host name of
        the gateway's address.
    munge : str
        The munge command (default: ``munge`` on the PATH).
    timeout : float
        Seconds munge may take.
    """

    def __init__(
        self,
        service_account: str | int = "slurmgw",
        audience: str | None = None,
        munge: str = "munge",
        timeout: float = 10.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.service_uid = _service_uid(service_account)
        self.audience = audience
        self.munge = munge
        self.timeout = float(timeout)

    def pre_request(self, resp) -> tuple[dict[str, str], None]:
        """A fresh credential for the request the gateway answered 401."""
        audience = self.audience or resp.url.host or ""
        return {"Authorization": "Munge " + self.credential(audience)}, None

    def credential(self, audience: str) -> str:
        """Run munge: a credential for ``audience``, restricted to the service account."""
        argv = [self.munge, f"--restrict-uid={self.service_uid}"]
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
            detail = done.stderr.decode("utf-8", "replace").strip() or out[:200]
            raise MungeAuthError(
                f"munge exited {done.returncode}: {detail} (is munged running on this host?)"
            )
        return out
