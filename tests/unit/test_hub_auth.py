"""JupyterHubAuthenticator (slurm_gateway.hub_auth): the hub's answers judged, and the class
against a fake hub that answers as JupyterHub 5 does (403 to a token it does not know)."""

import asyncio
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request

from slurm_gateway.hub_auth import UNKNOWN_TOKEN, JupyterHubAuthenticator, judge_hub_answer

ACCESS = "access:services!service=dask-gateway"
ALICE = {"kind": "user", "name": "alice", "groups": ["g"], "admin": False, "scopes": [ACCESS]}


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_token_the_hub_does_not_know_is_401(status):
    answer = judge_hub_answer(status, {"status": status}, "dask-gateway")
    assert (answer.user, answer.status, answer.reason) == (None, 401, UNKNOWN_TOKEN)


def test_a_users_token_with_the_access_scope_is_that_user():
    user = judge_hub_answer(200, ALICE, "dask-gateway").user
    assert (user.name, user.groups, user.admin) == ("alice", {"g"}, False)


def test_without_the_access_scope_401_unless_scopes_are_not_checked():
    model = {**ALICE, "scopes": ["access:servers!server=alice/"]}
    answer = judge_hub_answer(200, model, "dask-gateway")
    assert answer.status == 401 and "may not use the service dask-gateway" in answer.reason
    assert judge_hub_answer(200, model, None).user.name == "alice"
    assert judge_hub_answer(200, {**model, "scopes": ["access:services"]}, "x").user.name == "alice"


def test_services_and_names_with_a_colon_are_nobodys_account():
    service = {"kind": "service", "name": "alice", "scopes": [ACCESS]}
    assert judge_hub_answer(200, service, "dask-gateway").user.name == "service:alice"
    odd = {**ALICE, "name": "service:alice"}
    assert judge_hub_answer(200, odd, "dask-gateway").user.name == "user:service:alice"


@pytest.mark.parametrize(
    "status, model, expected",
    [
        (500, None, 502),
        (503, None, 502),
        (400, None, 500),
        (200, "text", 500),
        (200, {}, 500),
        (200, {"name": "alice", "scopes": [ACCESS]}, 500),  # no kind: fail closed
        (200, {**ALICE, "kind": "group"}, 500),
    ],
)
def test_hub_failures_are_not_the_users_fault(status, model, expected):
    assert judge_hub_answer(status, model, "dask-gateway").status == expected


async def _authenticate(header: str | None, hub_delay: float = 0) -> int | str:
    """Authenticate one request carrying ``header`` against a fake hub (answering after
    ``hub_delay`` seconds): the user's name, or the HTTP status of the refusal."""

    async def user(request: web.Request) -> web.Response:
        await asyncio.sleep(hub_delay)
        if request.headers.get("Authorization") == "token good":
            return web.json_response(ALICE)
        return web.json_response({"status": 403, "message": "Forbidden"}, status=403)

    app = web.Application()
    app.router.add_get("/hub/api/user", user)
    async with TestServer(app) as hub:
        auth = JupyterHubAuthenticator(
            jupyterhub_api_url=str(hub.make_url("/hub/api")),
            jupyterhub_service_name="dask-gateway",
            hub_request_timeout=1,
            log=logging.getLogger("test-hub-auth"),
        )
        await auth.setup(None)
        headers = {"Authorization": header} if header else {}
        try:
            return (await auth.authenticate(make_mocked_request("GET", "/", headers=headers))).name
        except web.HTTPException as exc:
            return exc.status
        finally:
            await auth.cleanup()


def test_against_a_hub_forged_tokens_get_401_and_a_log_line(caplog):
    caplog.set_level(logging.WARNING)
    assert asyncio.run(_authenticate("jupyterhub good")) == "alice"
    assert asyncio.run(_authenticate("jupyterhub secret-forged-7f3a")) == 401
    assert UNKNOWN_TOKEN in caplog.text
    assert "secret-forged-7f3a" not in caplog.text  # the token is never logged
    assert asyncio.run(_authenticate(None)) == 401
    assert asyncio.run(_authenticate("Basic YWxpY2U6")) == 401


def test_a_hub_that_does_not_answer_in_time_gets_the_request_a_502(caplog):
    caplog.set_level(logging.WARNING)
    assert asyncio.run(_authenticate("jupyterhub good", hub_delay=3)) == 502
    assert "the hub did not answer" in caplog.text


def test_an_unreachable_hub_gets_the_request_a_502():
    async def attempt() -> int:
        auth = JupyterHubAuthenticator(
            jupyterhub_api_url="http://127.0.0.1:9/hub/api",  # discard port: refused
            jupyterhub_service_name="dask-gateway",
            log=logging.getLogger("test-hub-auth"),
        )
        await auth.setup(None)
        try:
            await auth.authenticate(
                make_mocked_request("GET", "/", headers={"Authorization": "jupyterhub t"})
            )
        except web.HTTPException as exc:
            return exc.status
        finally:
            await auth.cleanup()
        return 200

    assert asyncio.run(attempt()) == 502


@pytest.mark.parametrize(
    "settings",
    [{}, {"jupyterhub_service_name": "dask-gateway", "use_service_access_scopes": False}],
)
def test_it_refuses_to_start_without_the_service_scope_check(settings, monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_SERVICE_NAME", raising=False)
    auth = JupyterHubAuthenticator(
        jupyterhub_api_url="http://127.0.0.1:9/hub/api", log=logging.getLogger("t"), **settings
    )
    with pytest.raises(ValueError, match="jupyterhub_service_name"):
        asyncio.run(auth.setup(None))
