"""The jobs' end reports: ``POST /api/v1/clusters/<name>/job-end``, sent by the job script's
exit path (``templates/base.sh.j2``) when a scheduler or worker ends, however it ends.

A report is authenticated as its cluster, with the cluster's own API token (as the
scheduler's heartbeats are), and may only concern that cluster's own jobs: any user can
send one for her own cluster, so a report is a hint to ask SLURM about one job at once,
never a fact; SLURM's answer decides. The log lines it carries are the user's own, shown
to her only, with control characters replaced.

Answers: 401 without the cluster's token, 403 for a job that is not one of the cluster's,
413 for a body over :data:`MAX_BODY_BYTES`, 422 for a malformed one, 202 otherwise.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from dask_gateway_server.backends.db_base import Cluster

#: Largest body taken (the script sends at most 2000 bytes of log).
MAX_BODY_BYTES = 16384  # a 2000-byte tail JSON-escaped (\uXXXX) is up to 12 kB
#: Characters of log kept from a report; its last line goes into a failure message, as the
#: log's last line read as the user would.
MAX_TAIL_CHARS = 2000
MESSAGE_LINES = 1
MAX_MESSAGE_CHARS = 500
ROLES = ("scheduler", "worker")
_JOB_ID = re.compile(r"^\d{1,12}(_\d{1,9})?$")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class EndReport:
    """What a job said about its own end (claims, until SLURM confirms them)."""

    job_id: str
    role: str
    exit_status: int
    stop_asked: bool
    log_tail: str


def parse_end_report(body: object) -> EndReport | str:
    """The report in a decoded JSON body, or what is wrong with it."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    job_id, role, status = body.get("job_id"), body.get("role"), body.get("exit_status")
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        return "job_id must be a SLURM job id"
    if role not in ROLES:
        return f"role must be one of {', '.join(ROLES)}"
    if not isinstance(status, int) or isinstance(status, bool) or not 0 <= status <= 255:
        return "exit_status must be an integer from 0 to 255"
    stop_asked, tail = body.get("stop_asked", False), body.get("log_tail", "")
    if not isinstance(stop_asked, bool) or not isinstance(tail, str):
        return "stop_asked must be a boolean and log_tail a string"
    return EndReport(job_id, role, status, stop_asked, printable(tail[-MAX_TAIL_CHARS:]))


def printable(text: str) -> str:
    """``text`` with control characters (newlines excepted) replaced by ``?``."""
    return _CONTROL.sub("?", text)


def tail_for_message(tail: str) -> str:
    """The last non-empty lines of a reported log, on one line, bounded."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return " | ".join(lines[-MESSAGE_LINES:])[-MAX_MESSAGE_CHARS:]


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization: token ...`` header carries the cluster's token."""
    kind, _, given = (authorization or "").partition(" ")
    return kind == "token" and hmac.compare_digest(given.encode(), token.encode())


def cluster_job_ids(cluster: Cluster) -> set[str]:
    """The job ids the gateway recorded for a cluster: its scheduler's and its workers'."""
    records = [cluster.state, *(worker.state for worker in cluster.workers.values())]
    return {state["job_id"] for state in records if state.get("job_id")}


def job_end_handler(
    get_cluster: Callable[[str], Cluster | None],
    on_report: Callable[[Cluster, EndReport], Awaitable[None]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The route's handler: checks, then ``on_report(cluster, report)``."""

    async def handler(request: web.Request) -> web.Response:
        cluster = get_cluster(request.match_info["cluster_name"])
        if cluster is None or not token_matches(
            request.headers.get("Authorization"), cluster.token
        ):
            return web.json_response({"error": "not this cluster's token"}, status=401)
        if request.content_length is None or request.content_length > MAX_BODY_BYTES:
            return web.json_response({"error": "body missing or too large"}, status=413)
        try:
            body = json.loads(await request.read())  # its length was checked above
        except (ValueError, RecursionError):
            body = None
        report = parse_end_report(body)
        if isinstance(report, str):
            return web.json_response({"error": report}, status=422)
        if report.job_id not in cluster_job_ids(cluster):
            return web.json_response({"error": "not a job of this cluster"}, status=403)
        await on_report(cluster, report)
        return web.json_response({}, status=202)

    return handler
