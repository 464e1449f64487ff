"""The gateway's HTTP middlewares, in front of dask-gateway-server's own routes.

- A client waiting for a cluster that failed gets 409 with the recorded reason (SLURM's
  facts, or an admin's reason for stopping it): the stock client raises it verbatim,
  instead of "failed to start, see logs"; so does a ``scale`` or ``adapt`` of it.
- Bodies of ``new_cluster``, ``scale`` and ``adapt`` are checked first: the stock routes
  answer a body that is not JSON with 500 and pass some bad values on to the scheduler
  (``adapt`` with minimum > maximum even makes it fail and the gateway stop the cluster).
  A bad body gets 422 naming the field and the fix; 422 because, through the proxy, the
  stock client shows the message of a 422 only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from .user_options import request_body_problem

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def request_action(method: str, path: str, has_cluster_name: bool) -> str | None:
    """Which checked request this is: ``create``, ``scale``, ``adapt`` or None."""
    if method != "POST":
        return None
    path = path.rstrip("/")
    if path.endswith("/api/v1/clusters"):
        return "create"
    action = path.rsplit("/", 1)[-1]
    if action in ("scale", "adapt") and has_cluster_name:
        return action
    return None


@web.middleware
async def request_body_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    action = request_action(request.method, request.path, "cluster_name" in request.match_info)
    if action:
        try:
            body = await request.json()
        except (ValueError, RecursionError):
            body = None
        problem = request_body_problem(action, body)
        if problem:
            return web.json_response({"error": problem}, status=422)
    return await handler(request)


def is_wait_for(method: str, path: str, query, name: str, status: int) -> bool:
    """A client's successful ``wait`` for the cluster ``name`` (the route already checked
    that the user may see it)."""
    return (
        method == "GET"
        and "wait" in query
        and status == 200
        and path.endswith(f"/api/v1/clusters/{name}")
    )


def is_refused_action(method: str, path: str, name: str, status: int) -> bool:
    """A ``scale`` or ``adapt`` of the cluster ``name`` refused with 409 because it is not
    running (after the route checked the user may see it)."""
    return (
        method == "POST"
        and status == 409
        and path.rstrip("/").rsplit("/", 2)[-2:] in ([name, "scale"], [name, "adapt"])
    )


def failure_reason_middleware(failure_of: Callable[[str], str | None]) -> Middleware:
    """A middleware answering a client's ``wait`` for a failed cluster with 409 and
    ``failure_of(name)``, the cluster's recorded failure (None: it has not failed)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        name = request.match_info.get("cluster_name")
        if name and (
            is_wait_for(request.method, request.path, request.query, name, response.status)
            or is_refused_action(request.method, request.path, name, response.status)
        ):
            failure = failure_of(name)
            if failure is not None:
                return web.json_response({"error": failure}, status=409)
        return response

    return middleware
