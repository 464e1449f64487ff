"""The jobs' end reports: parsed strictly, bounded, and refused unless they come with the
cluster's own token and concern one of that cluster's own jobs."""

import asyncio
import json
from types import SimpleNamespace

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from slurm_gateway.end_reports import (
    MAX_BODY_BYTES,
    MESSAGE_LINES,
    EndReport,
    job_end_handler,
    parse_end_report,
    tail_for_message,
    token_matches,
)

GOOD = {"job_id": "41", "role": "scheduler", "exit_status": 0, "stop_asked": True}


def test_a_good_report_is_parsed_with_its_log_made_printable():
    report = parse_end_report({**GOOD, "log_tail": "ok\n\x1b[31mred\x00\n"})
    assert report == EndReport("41", "scheduler", 0, True, "ok\n?[31mred?\n")
    assert parse_end_report({**GOOD, "job_id": "41_3", "role": "worker"}).job_id == "41_3"


def test_malformed_reports_say_what_is_wrong():
    for body, problem in [
        ([], "JSON object"),
        ({**GOOD, "job_id": "41; rm -rf /"}, "job_id"),
        ({**GOOD, "job_id": 41}, "job_id"),
        ({**GOOD, "role": "admin"}, "role"),
        ({**GOOD, "exit_status": True}, "exit_status"),
        ({**GOOD, "exit_status": 256}, "exit_status"),
        ({**GOOD, "stop_asked": "yes"}, "stop_asked"),
        ({**GOOD, "log_tail": ["x"]}, "log_tail"),
    ]:
        assert problem in parse_end_report(body), body


def test_the_message_gets_the_last_lines_of_the_log_bounded():
    lines = "\n".join(f"line {i}" for i in range(10)) + "\n\n"
    assert tail_for_message(lines) == " | ".join(f"line {i}" for i in range(10 - MESSAGE_LINES, 10))
    assert len(tail_for_message("x" * 5000)) == 500


def test_only_the_clusters_own_token_is_taken():
    assert token_matches("token abc", "abc")
    assert not token_matches("token abd", "abc")
    assert not token_matches("Bearer abc", "abc")
    assert not token_matches(None, "abc")
    assert not token_matches("token \u00e9", "abc")


def _cluster(name, token, scheduler_job, worker_jobs):
    workers = {f"w{j}": SimpleNamespace(state={"job_id": j}) for j in worker_jobs}
    return SimpleNamespace(name=name, token=token, state={"job_id": scheduler_job}, workers=workers)


def test_the_route_refuses_what_is_not_the_reporting_clusters():
    clusters = {
        "alice1": _cluster("alice1", "ta", "10", ["11_0", "11_1"]),
        "bob1": _cluster("bob1", "tb", "20", []),
    }
    received = []

    async def on_report(cluster, report):
        received.append((cluster.name, report.job_id))

    async def post(name, token, body, raw=None):
        app = web.Application()
        app.router.add_post("/c/{cluster_name}", job_end_handler(clusters.get, on_report))
        async with TestClient(TestServer(app)) as client:
            response = await client.post(
                f"/c/{name}",
                data=raw if raw is not None else json.dumps(body),
                headers={"Authorization": f"token {token}"},
            )
            return response.status

    def status(*args, **kwargs):
        return asyncio.run(post(*args, **kwargs))

    assert status("bob1", "tb", {**GOOD, "job_id": "10"}) == 403  # alice's job, bob's token
    assert status("alice1", "tb", {**GOOD, "job_id": "10"}) == 401  # bob's token for alice's
    assert status("nobody", "tb", GOOD) == 401
    assert status("alice1", "ta", None, raw="{not json") == 422
    assert status("alice1", "ta", None, raw="x" * (MAX_BODY_BYTES + 1)) == 413
    assert received == []
    assert status("alice1", "ta", {**GOOD, "job_id": "11_1", "role": "worker"}) == 202
    assert received == [("alice1", "11_1")]
    # a full tail of non-ASCII text is \\uXXXX-escaped by the job's json.dumps (6 bytes a
    # character): still taken whole
    escaped = {**GOOD, "job_id": "11_1", "role": "worker", "log_tail": "\u00e9" * 2000}
    assert len(json.dumps(escaped)) > 12000
    assert status("alice1", "ta", escaped) == 202
    assert received[-1] == ("alice1", "11_1")
