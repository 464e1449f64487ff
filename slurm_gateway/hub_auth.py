"""JupyterHub authentication: dask-gateway's ``JupyterHubAuthenticator``, with a token the hub
does not know answered 401.

The stock class asks the hub who a token belongs to (``GET /hub/api/user`` with the user's
token). JupyterHub 2 and later answer 403 to a token that is not valid (forged, expired,
revoked), and the stock class turns every 403 into a 500 "Permission failure verifying user's
JupyterHub API token", logged as an ERROR for each request: a forged token looks like a fault
of the gateway, and a flood of them fills its log. Every valid token may identify itself on
that endpoint (it needs no scope), so a 403 there is about the token, never about the
gateway's own permissions. This class answers 401 instead, with the reason logged at most
once per kind every 10 s. It also fails closed where the stock class is lenient: it refuses to
start without ``jupyterhub_service_name`` (the stock class then accepts every token the hub
knows), waits at most ``hub_request_timeout`` for the hub (502 after), and refuses an answer
that does not say whether the token is a user's. Everything else is the stock class's: its
options (``c.JupyterHubAuthenticator.*``, the same name), the
``access:services!service=NAME`` check, service tokens named ``service:NAME``.

Configure it with ``c.SlurmGateway.authenticator_class =
"slurm_gateway.hub_auth.JupyterHubAuthenticator"`` (README, "Connect your site's users").
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp import web
from dask_gateway_server.auth import JupyterHubAuthenticator as StockJupyterHubAuthenticator
from dask_gateway_server.auth import unauthorized
from dask_gateway_server.models import User
from traitlets import Float

from .munge_core import RateLimitedLog, sanitize

__all__ = ["HubAnswer", "JupyterHubAuthenticator", "judge_hub_answer"]

UNKNOWN_TOKEN = "the hub does not know this token (forged, expired or revoked)"


@dataclass(frozen=True)
class HubAnswer:
    """What to do with the hub's answer about a token: ``user`` (accepted), or ``status``
    (401, 500, 502) and ``reason`` (logged, not sent), of a ``kind`` (for the log's rate
    limit)."""

    user: User | None = None
    status: int = 200
    reason: str = ""
    kind: str = ""


def judge_hub_answer(status: int, model: object, service_name: str | None) -> HubAnswer:
    """Decide on the hub's answer to ``GET /hub/api/user`` with a client's token.

    ``service_name``: the gateway's service name when tokens must carry
    ``access:services[!service=NAME]`` (``use_service_access_scopes``), else None."""
    if status in (401, 403, 404):
        return HubAnswer(status=401, reason=UNKNOWN_TOKEN, kind="unknown token")
    if status >= 500:
        return HubAnswer(status=502, reason=f"the hub answered {status}", kind="hub failed")
    if status >= 400 or not isinstance(model, dict) or not isinstance(model.get("name"), str):
        reason = f"unexpected answer from the hub ({status})"
        return HubAnswer(status=500, reason=reason, kind="hub failed")
    name, kind = model["name"], model.get("kind")
    if kind not in ("user", "service"):  # JupyterHub always says; fail closed if not
        return HubAnswer(status=500, reason=f"the hub answered kind {kind!r}", kind="hub failed")
    if kind != "user" or ":" in name:
        name = f"{kind}:{name}"  # a service (or a name that looks like one) is no user's
    if service_name is not None:
        wanted = {"access:services", f"access:services!service={service_name}"}
        if not wanted.intersection(model.get("scopes") or []):
            reason = f"{name}'s token may not use the service {service_name}"
            return HubAnswer(status=401, reason=reason, kind="no access scope")
    groups = model.get("groups") or []
    return HubAnswer(user=User(name, groups=groups, admin=bool(model.get("admin", False))))


class JupyterHubAuthenticator(StockJupyterHubAuthenticator):
    """dask-gateway's JupyterHubAuthenticator; a token the hub does not know gets 401 (the
    stock class answers 500), the reason logged with a rate limit."""

    hub_request_timeout = Float(
        10,
        min=1,
        help="""Seconds the gateway waits for the hub's answer about a token. A hub that does
        not answer in time gets the request a 502 (the gateway is not the cause).""",
        config=True,
    )

    async def setup(self, app: web.Application | None) -> None:
        if not self.jupyterhub_service_name or not self.use_service_access_scopes:
            # Without the scope check, every token the hub knows is accepted: other services'
            # tokens, and OAuth tokens the hub hands users' servers when someone else opens
            # them (admins, shared servers), which those servers' owners could replay here.
            raise ValueError(
                "JupyterHubAuthenticator needs c.JupyterHubAuthenticator."
                'jupyterhub_service_name = "<the gateway\'s service name in the hub>" '
                "(and use_service_access_scopes left on), so that only tokens allowed to "
                "use that service are accepted"
            )
        await super().setup(app)
        self._refusals = RateLimitedLog(self.log)

    async def authenticate(self, request: web.Request) -> User:
        token = self.get_token(request)
        if token is None:
            raise unauthorized("jupyterhub")
        try:
            answer = await self._ask_hub(token)
        except (TimeoutError, aiohttp.ClientError) as exc:
            reason = f"the hub did not answer ({type(exc).__name__})"
            answer = HubAnswer(status=502, reason=reason, kind="hub failed")
        if answer.user is not None:
            return answer.user
        why = f"JupyterHub token refused from {request.remote}: {sanitize(answer.reason, 200)}"
        self._refusals.warning(answer.kind, why)
        if answer.status == 401:
            raise unauthorized("jupyterhub")
        error = web.HTTPBadGateway if answer.status == 502 else web.HTTPInternalServerError
        raise error(reason="Failure verifying the JupyterHub API token")

    async def _ask_hub(self, token: str) -> HubAnswer:
        async with self.session.get(
            f"{self.jupyterhub_api_url.rstrip('/')}/user",
            headers={"Authorization": f"token {token}"},
            ssl=self.ssl_context,
            timeout=aiohttp.ClientTimeout(total=self.hub_request_timeout),
        ) as resp:
            try:
                model = await resp.json(content_type=None) if resp.status == 200 else None
            except ValueError:
                model = None
            return judge_hub_answer(resp.status, model, self.jupyterhub_service_name)
