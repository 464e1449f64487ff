"""/api/health's decisions (health.py): which part fails, said in its message, without a
health request ever reaching slurmctld."""

from __future__ import annotations

import asyncio
import json
import logging
import warnings

import sqlalchemy as sa
from aiohttp import web

from slurm_gateway import dgs_compat
from slurm_gateway.availability import Observation, is_due
from slurm_gateway.health import (
    FAIL,
    PASS,
    WARN,
    Check,
    HealthMonitor,
    accounting_check,
    health_body,
    ping_answer,
    slurm_check,
)
from slurm_gateway.transport import CommandResult

DOWN = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"


def _result(argv, rc=0, out="", err=""):
    return CommandResult(list(argv), rc, out, err)


def test_slurmctld_failing_its_last_answer_fails_naming_the_part_not_what_it_said():
    check = slurm_check(Observation(False, f"squeue exited 1: {DOWN}", 10.0), None, 11.0, 5)
    assert check == Check(FAIL, "slurmctld does not answer; see the gateway log")


def test_slurmctld_answering_passes_and_never_checked_warns():
    assert slurm_check(Observation(True, "answered", 10.0), None, 12.0, 5).status == PASS
    assert slurm_check(None, None, 12.0, 5).status == WARN


def test_a_command_hanging_on_slurmctld_fails_after_a_bound():
    seen = Observation(True, "answered", 0.0)
    assert slurm_check(seen, 1.0, 10.0, 2).status == PASS  # 9 s under way: not yet
    check = slurm_check(seen, 1.0, 40.0, 2)
    assert check.status == FAIL and "not answered for 39 s" in check.message


def test_an_old_answer_warns_that_slurm_was_not_checked_since():
    check = slurm_check(Observation(True, "answered", 0.0), None, 100.0, 5)
    assert check.status == WARN and "100 s ago" in check.message


def test_accounting_down_only_warns():
    check = accounting_check(Observation(False, "sacct exited 1: connection refused", 0), 1)
    assert check.status == WARN and "slurmdbd" in check.message
    assert "refused" not in check.message and "see the gateway log" in check.message


def test_the_worst_check_is_the_status():
    body = health_body(
        {"slurm": Check(PASS, "ok"), "accounting": Check(WARN, "x"), "proxy": Check(FAIL, "y")}
    )
    assert body["status"] == FAIL
    assert body["checks"]["proxy"] == {"status": FAIL, "message": "y"}
    assert health_body({"slurm": Check(PASS, "ok"), "db": Check(WARN, "x")})["status"] == WARN


def test_scontrol_ping_down_is_a_failure():
    up = _result(["scontrol", "ping"], 0, "Slurmctld(primary) at vm is UP\n")
    down = _result(["scontrol", "ping"], 1, "Slurmctld(primary) at vm is DOWN\n")
    down_rc0 = _result(["scontrol", "ping"], 0, "Slurmctld(primary) at vm is DOWN\n")
    assert ping_answer(up) == (True, "Slurmctld(primary) at vm is UP")
    assert not ping_answer(down)[0] and "DOWN" in ping_answer(down)[1]
    assert not ping_answer(down_rc0)[0]


def test_due_after_a_period():
    assert is_due(None, 0, 5)
    assert not is_due(Observation(True, "", 10), 14, 5)
    assert is_due(Observation(True, "", 10), 15, 5)


class _Slurm:
    """Answers squeue/sacct/scontrol like a SLURM that is up or down; counts calls."""

    def __init__(self):
        self.up = True
        self.calls: list[list[str]] = []
        self.stderr = {"squeue": DOWN, "sacct": DOWN, "scontrol": DOWN}

    async def run(self, argv, **kwargs):
        self.calls.append(list(argv))
        if not self.up:
            return _result(argv, 1, "", self.stderr[argv[0]])
        if argv[-1] == "ping":
            return _result(argv, 0, "Slurmctld(primary) at vm is UP\n")
        return _result(argv, 0, "")


def _monitor(slurm: _Slurm, tmp_path, proxy_url="http://127.0.0.1:1/api/version"):
    engine = sa.create_engine(f"sqlite:///{tmp_path}/db.sqlite")
    return HealthMonitor(
        slurm.run,
        scontrol="scontrol",
        squeue="squeue",
        sacct="sacct",
        period=5,
        proxy_url=proxy_url,
        gateway_url=proxy_url,
        engine=engine,
        log=logging.getLogger("test"),
    )


def test_health_requests_never_run_a_slurm_command(tmp_path):
    slurm = _Slurm()
    monitor = _monitor(slurm, tmp_path)

    async def scenario():
        for _ in range(20):
            await monitor.report()

    asyncio.run(scenario())
    assert slurm.calls == []


def test_the_pollers_squeue_failing_fails_health_and_no_ping_is_added(tmp_path):
    slurm = _Slurm()
    monitor = _monitor(slurm, tmp_path)
    polled = monitor.observing(slurm.run)

    async def scenario():
        await polled(["squeue", "--jobs=1"])
        await monitor.refresh()  # the poller has just asked: no ping
        first = await monitor.report()
        slurm.up = False
        await polled(["squeue", "--jobs=1"])
        second = await monitor.report()
        slurm.up = True
        await polled(["squeue", "--jobs=1"])
        return first, second, await monitor.report()

    first, second, third = asyncio.run(scenario())
    assert [c[0] for c in slurm.calls].count("scontrol") == 0
    assert first["checks"]["slurm"]["status"] == PASS
    assert second["checks"]["slurm"]["status"] == FAIL
    assert "connect failure" not in str(second)  # what SLURM said is in the log only
    assert third["checks"]["slurm"]["status"] == PASS


def test_without_polls_the_monitor_pings_once_per_period(tmp_path):
    slurm = _Slurm()
    monitor = _monitor(slurm, tmp_path)
    monitor._serving = True  # the gateway's API listens: the proxy is probed

    async def scenario():
        await monitor.refresh()
        await monitor.refresh()  # within the period: no second ping
        slurm.up = False
        monitor.parts.seen["slurm"] = Observation(True, "old", 0.0)  # a period ago
        await monitor.refresh()
        return await monitor.report()

    body = asyncio.run(scenario())
    assert [c for c in slurm.calls if c[0] == "scontrol"] == [["scontrol", "ping"]] * 2
    assert body["status"] == FAIL
    assert body["checks"]["slurm"]["status"] == FAIL
    assert body["checks"]["proxy"] == {  # nothing listens on port 1
        "status": FAIL,
        "message": "proxy does not answer; see the gateway log",
    }
    assert "127.0.0.1:1" in monitor.parts.seen["proxy"].detail  # for the log
    assert body["checks"]["database"] == {"status": PASS, "message": "database answers"}


def test_while_the_gateway_is_not_serving_yet_the_proxy_is_not_failed(tmp_path):
    monitor = _monitor(_Slurm(), tmp_path)  # its gateway_url: nothing listens

    async def scenario():
        await monitor.refresh()
        return await monitor.report()

    body = asyncio.run(scenario())
    assert body["checks"]["proxy"] == {"status": WARN, "message": "proxy not checked yet"}
    assert body["status"] == WARN


def test_a_database_that_cannot_be_opened_fails(tmp_path):
    monitor = _monitor(_Slurm(), tmp_path)
    monitor._engine = sa.create_engine(f"sqlite:///{tmp_path}/missing/dir/db.sqlite")
    body = asyncio.run(monitor.report())
    assert body["checks"]["database"] == {
        "status": FAIL,
        "message": "database does not answer; see the gateway log",
    }
    assert "unable to open database file" in monitor.parts.seen["database"].detail


def test_a_proxy_routing_to_the_gateway_passes(tmp_path):
    async def scenario():
        async def version(request):
            return web.json_response({"version": "x"})

        app = web.Application()
        app.router.add_get("/api/version", version)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        monitor = _monitor(_Slurm(), tmp_path, f"http://127.0.0.1:{port}/api/version")
        await monitor.refresh()
        wrong = _monitor(_Slurm(), tmp_path, f"http://127.0.0.1:{port}/nothing")
        wrong._serving = True
        await wrong.refresh()
        await runner.cleanup()
        return monitor.parts.seen["proxy"], wrong.parts.seen["proxy"]

    good, wrong = asyncio.run(scenario())
    assert good.ok
    assert not wrong.ok and "HTTP 404" in wrong.detail


def test_the_stock_route_answers_the_backends_report_with_503_on_fail():
    from dask_gateway_server.routes import default_routes

    async def scenario():
        app = web.Application()
        app.add_routes(default_routes)

        class Gateway:
            async def health(self):
                return {"status": "pass"}

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dask-gateway-server's key, as in its app.py
            app["gateway"] = Gateway()

        async def report():
            return {"status": FAIL, "checks": {"slurm": {"status": FAIL, "message": "down"}}}

        dgs_compat.answer_health_with(app, report)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            import aiohttp

            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/api/health") as response:
                    return response.status, await response.json()
        finally:
            await runner.cleanup()

    status, body = asyncio.run(scenario())
    assert status == 503
    assert body["checks"]["slurm"]["message"] == "down"


def test_a_release_whose_health_route_stops_asking_the_gateway_is_caught(monkeypatch):
    from dask_gateway_server import routes

    async def health(request):
        return web.json_response({"status": "pass"})

    monkeypatch.setattr(routes, "health", health)
    assert "the /api/health route no longer calls the gateway's health()" in (
        dgs_compat.internals_problems()
    )


def test_each_change_is_logged_once(tmp_path, caplog):
    slurm = _Slurm()
    monitor = _monitor(slurm, tmp_path)
    polled = monitor.observing(slurm.run)

    async def scenario():
        await polled(["squeue", "--jobs=1"])
        slurm.up = False
        for _ in range(3):
            await polled(["squeue", "--jobs=1"])
            monitor.parts.seen["slurm"] = Observation(False, "old", 0.0)
            await monitor.refresh()  # its own ping fails too: no second line
        slurm.up = True
        await polled(["squeue", "--jobs=1"])

    with caplog.at_level(logging.INFO, logger="test"):
        asyncio.run(scenario())
    health_lines = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("Health: slurm")
    ]
    assert health_lines == [
        f"Health: slurm fails: squeue exited 1: {DOWN}",
        "Health: slurm answers again",
    ]


# What a failing part says, as it would read on a site: nothing of it may reach the public.
SECRET_DB_URL = "postgresql+psycopg://gwuser:Pw-s3cret-42@/gatewaydb?host=/run/secret-pg-dir"
SSH_DOWN = "ssh: connect to slurmgw@login-secret.example.org port 22: Connection refused"
SACCT_SECRET = "sacct: error: token=AKIA0SECRET0123456789 rejected by slurmdbd@db-secret"
SECRET_PROXY = "http://127.0.0.1:1/secret-prefix/api/version"
LEAKS = (
    "Pw-s3cret-42",
    "gwuser",
    "secret-pg-dir",
    "/run/",
    "postgresql",
    "slurmgw@",
    "login-secret",
    "Connection refused",
    "AKIA0SECRET",
    "db-secret",
    "secret-prefix",
    "127.0.0.1",
)


def test_the_public_body_names_each_failing_part_but_never_what_it_said(tmp_path, caplog):
    slurm = _Slurm()
    slurm.stderr = {"squeue": SSH_DOWN, "sacct": SACCT_SECRET, "scontrol": SSH_DOWN}
    monitor = _monitor(slurm, tmp_path, SECRET_PROXY)
    monitor._engine = sa.create_engine(SECRET_DB_URL)
    monitor._serving = True
    polled = monitor.observing(slurm.run)
    slurm.up = False

    async def scenario():
        await polled(["squeue", "--jobs=1"])
        await polled(["sacct", "--jobs=1"])
        await monitor.refresh()
        return await monitor.report(), await monitor.admin_report()

    with caplog.at_level(logging.INFO, logger="test"):
        public, admin = asyncio.run(scenario())
    checks = public["checks"]
    assert public["status"] == FAIL
    assert {part: c["status"] for part, c in checks.items()} == {
        "slurm": FAIL,
        "accounting": WARN,
        "database": FAIL,
        "proxy": FAIL,
    }
    for part, word in (
        ("slurm", "slurmctld"),
        ("accounting", "slurmdbd"),
        ("database", "database"),
    ):
        assert word in checks[part]["message"]
    assert all(set(c) == {"status", "message"} for c in checks.values())
    text = json.dumps(public)
    assert [leak for leak in LEAKS if leak in text] == []
    # The admin (admin channel, the log) gets the details, bounded.
    details = {part: c["detail"] for part, c in admin["checks"].items()}
    assert SSH_DOWN in details["slurm"] and SACCT_SECRET in details["accounting"]
    assert "secret-pg-dir" in details["database"] and "secret-prefix" in details["proxy"]
    assert admin["status"] == FAIL and admin["checks"]["slurm"]["status"] == FAIL
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert SSH_DOWN in logged and "secret-pg-dir" in logged
