"""A real JupyterHub in front of the gateway (issue 11, item 3), driven as a browser drives it.

The hub is ``scripts/jupyterhub.sh`` (JupyterHub from PyPI, configurable-http-proxy from npm,
PAM login with passwords the script sets, single-user servers spawned as alice and bob by the
LocalProcessSpawner), started once for the module; the gateway is one of the test's own
(``make_gateway``), registered in the hub as the service ``dask-gateway`` and authenticating
with ``slurm_gateway.hub_auth.JupyterHubAuthenticator`` (dask-gateway's, except that a token
the hub does not know gets 401 where the stock class answers 500). alice and bob log in with
their passwords through the hub's login form, their servers are started through the hub's
API, kernels through the servers' REST API, and the code goes over the kernel websocket
(``harness.jupyter``). Users' ``Gateway()`` finds the gateway through the ``DASK_CONFIG``
the hub gives their servers (``gateway.yaml``: the gateway's address, ``auth: jupyterhub``),
and authenticates with the server's own ``JUPYTERHUB_API_TOKEN``. One cluster in the module.
The first run installs the hub under ``HUB_PREFIX`` (pip and npm, about a minute).
"""

from __future__ import annotations

import json
import os
import pwd
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, USERS, assert_refused, run, user_jobs, wait_until

from harness.jupyter import Hub, SingleUser
from harness.processes import all_pids

HUB_PREFIX = Path(os.environ.get("HUB_PREFIX", "/opt/slurm-gateway/hub"))
# The hub's public port; +1 its API, +2 the proxy's API, +10/+11 the users' servers.
HUB_PORT = int(os.environ.get("HUB_PORT", "18600"))
HUB_URL = f"http://127.0.0.1:{HUB_PORT}"
# make_gateway's first gateway (asserted below)
GATEWAY_ADDRESS = os.environ.get("HUB_GATEWAY_ADDRESS", "http://127.0.0.1:18100")


def hub_script(action: str) -> None:
    # The machine's environment: pip and npm need its registry settings (CA bundle, HOME).
    env = {
        **os.environ,
        "HUB_PREFIX": str(HUB_PREFIX),
        "HUB_PORT": str(HUB_PORT),
        "HUB_USERS": " ".join(USERS),
        "HUB_GATEWAY_ADDRESS": GATEWAY_ADDRESS,
    }
    out = run(["bash", str(REPO / "scripts" / "jupyterhub.sh"), action], timeout=600, env=env)
    assert out.returncode == 0, f"jupyterhub.sh {action}:\n{out.stdout}\n{out.stderr[-3000:]}"


def singleuser_pids(user: str) -> list[int]:
    """The user's jupyterhub-singleuser processes (by owner and command line)."""
    uid = pwd.getpwnam(user).pw_uid
    found = []
    for pid in all_pids():
        try:
            owner = os.stat(f"/proc/{pid}").st_uid
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if owner == uid and b"jupyterhub-singleuser" in cmd:
            found.append(pid)
    return found


@pytest.fixture(scope="module")
def hub():
    """The hub, up for the module (alice and bob may log in), then down with their servers."""
    hub_script("up")
    yield Hub(HUB_URL)
    hub_script("down")
    for user in USERS:
        assert wait_until(lambda user=user: not singleuser_pids(user), 30), f"{user}'s server"


@pytest.fixture(scope="module")
def passwords(hub) -> dict[str, str]:
    text = (HUB_PREFIX / "secrets" / "passwords").read_text()
    return dict(line.split(":", 1) for line in text.split())


def hub_gateway_config() -> str:
    """The gateway's config lines for the hub: its token there, the hub's API, the service."""
    token = (HUB_PREFIX / "secrets" / "gateway-api-token").read_text().strip()
    return f"""
    c.SlurmGateway.authenticator_class = "slurm_gateway.hub_auth.JupyterHubAuthenticator"
    c.JupyterHubAuthenticator.jupyterhub_api_url = "{HUB_URL}/hub/api"
    c.JupyterHubAuthenticator.jupyterhub_api_token = "{token}"
    c.JupyterHubAuthenticator.jupyterhub_service_name = "dask-gateway"
    """


def notebook(hub: Hub, user: str, password: str) -> tuple[SingleUser, str]:
    """Log ``user`` in, start their server through the hub's API and a kernel in it."""
    token = hub.user_token(user, password, note="test_jupyterhub")
    hub.start_server(user, token)
    server = hub.server(user, token)
    return server, server.start_kernel()


def cell(server: SingleUser, kernel: str, code: str, timeout: float = 300) -> dict:
    """Run a cell; it prints one JSON line last, returned here."""
    out = server.run(kernel, code, timeout)
    assert out.error is None, f"{out.error}\n{''.join(out.traceback)[-3000:]}\n{out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def gateway_status(gateway, token: str) -> int:
    """The gateway's answer to one cluster listing with ``token`` as a hub token."""
    request = urllib.request.Request(
        f"{gateway.address}/api/v1/clusters/", headers={"Authorization": f"jupyterhub {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


# alice's notebook: the Purdue guide, as she types it.
ALICE_GUIDE = """
import json, os, urllib.request
from dask_gateway import Gateway

gateway = Gateway()  # the site's config; no arguments, no password
cluster = gateway.new_cluster(conda_env={conda_env!r}, worker_memory=1, env=dict(os.environ))
cluster.scale(2)
client = cluster.get_client()
client.wait_for_workers(2, timeout=180)
task_uids = client.gather(client.map(lambda _: os.getuid(), range(8), pure=False))
with urllib.request.urlopen(cluster.dashboard_link, timeout=30) as response:
    dashboard = response.status
print(json.dumps(dict(
    name=cluster.name, uid=os.getuid(), task_uids=sorted(set(task_uids)), dashboard=dashboard,
    link=cluster.dashboard_link, auth=type(gateway.auth).__name__, address=gateway.address,
)))
"""

ALICE_AFTER = """
still_listed = cluster.name in [c.name for c in gateway.list_clusters()]
after = client.submit(lambda: os.getuid(), pure=False).result()
client.close()
cluster.shutdown()
print(json.dumps(dict(
    still_listed=still_listed, after=after, left=[c.name for c in gateway.list_clusters()],
)))
"""

BOB_TRIES = """
import gc, json, os
from dask_gateway import Gateway

def error_of(call, *args):
    try:
        call(*args)
    except Exception as exc:
        return f"{{type(exc).__name__}}: {{exc}}"
    finally:
        gc.collect()  # see tests/e2e/conftest.py, CLIENT_PRELUDE
    return None

gateway = Gateway()
print(json.dumps(dict(
    uid=os.getuid(),
    listed=[c.name for c in gateway.list_clusters()],
    connect=error_of(gateway.connect, {name!r}),
    scale=error_of(gateway.scale_cluster, {name!r}, 3),
    adapt=error_of(gateway.adapt_cluster, {name!r}, 1, 3),
    stop=error_of(gateway.stop_cluster, {name!r}),
)))
"""


def test_purdue_guide_in_alices_notebook_and_bob_cannot_touch_her_cluster(
    hub, passwords, make_gateway, alice_env
):
    gateway = make_gateway(hub_gateway_config())
    assert gateway.address == GATEWAY_ADDRESS  # what the hub's gateway.yaml names
    users_config = (HUB_PREFIX / "etc" / "dask" / "gateway.yaml").read_text()
    assert f"address: {GATEWAY_ADDRESS}" in users_config and "type: jupyterhub" in users_config
    assert "type: jupyterhub" in (gateway.client_config / "gateway.yaml").read_text()
    alice_uid, bob_uid = (pwd.getpwnam(user).pw_uid for user in ("alice", "bob"))

    alice_server, alice_kernel = notebook(hub, "alice", passwords["alice"])
    servers = []
    try:
        servers.append(alice_server)
        assert singleuser_pids("alice"), "alice's server does not run as alice"
        alice = cell(alice_server, alice_kernel, ALICE_GUIDE.format(conda_env=alice_env))
        assert (alice["uid"], alice["task_uids"]) == (alice_uid, [alice_uid])
        assert (alice["auth"], alice["address"]) == ("JupyterHubAuth", GATEWAY_ADDRESS)
        assert alice["dashboard"] == 200 and alice["link"].startswith(GATEWAY_ADDRESS), alice
        with urllib.request.urlopen(alice["link"], timeout=30) as response:  # through the proxy
            assert response.status == 200
        assert any("scheduler" in line for line in user_jobs("alice")), user_jobs("alice")

        bob_server, bob_kernel = notebook(hub, "bob", passwords["bob"])
        servers.append(bob_server)
        bob = cell(bob_server, bob_kernel, BOB_TRIES.format(name=alice["name"]))
        assert bob["uid"] == bob_uid and alice["name"] not in bob["listed"]
        assert_refused(bob, ("connect", "scale", "adapt", "stop"))

        after = cell(alice_server, alice_kernel, ALICE_AFTER)
        assert after["still_listed"] and after["after"] == alice_uid
        assert alice["name"] not in after["left"]
    finally:
        if servers:  # whatever happened, her cluster goes (no job may be left)
            try:
                alice_server.run(alice_kernel, "cluster.shutdown()", timeout=120)
            except Exception:
                pass  # no cluster, or no kernel: the check of her jobs below tells
        for server in servers:
            hub.stop_server(server.user, server.token)
    assert wait_until(lambda: not user_jobs("alice"), 60), user_jobs("alice")


def test_forged_and_expired_hub_tokens_get_401(hub, passwords, make_gateway):
    gateway = make_gateway(hub_gateway_config())
    offset = gateway.log.stat().st_size
    short_lived = hub.user_token("alice", passwords["alice"], expires_in=5)
    assert gateway_status(gateway, short_lived) == 200
    forged = os.urandom(16).hex()  # the shape of a hub token
    assert gateway_status(gateway, forged) == 401
    time.sleep(6)
    assert hub.whoami(short_lived)[0] == 403  # the hub itself no longer knows it
    assert gateway_status(gateway, short_lived) == 401
    # A hub token that may not use the gateway: the hub's admin service's own.
    admin = (HUB_PREFIX / "secrets" / "admin-api-token").read_text().strip()
    assert gateway_status(gateway, admin) == 401
    assert wait_until(lambda: "does not know this token" in gateway.log_tail(200), 10)
    logged = gateway.log.read_bytes()[offset:].decode(errors="replace")
    assert "may not use the service dask-gateway" in logged
    for token in (short_lived, forged, admin):
        assert token not in logged
    assert not user_jobs(*USERS)
