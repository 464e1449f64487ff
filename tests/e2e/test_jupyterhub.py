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

The harness sends passwords and tokens only to a hub port that root listens on, and whatever
fails, the module leaves no server or kernel of alice or bob running (the ``hub`` fixture) and
no cluster of alice's (the test's ``finally``).
"""

from __future__ import annotations

import json
import os
import pwd
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ERROR_OF, REPO, USERS, assert_refused, run, user_jobs, wait_until

from harness.jupyter import Hub, SingleUser, request
from harness.processes import (
    HarnessError,
    cmdline,
    descendants,
    kill_exact,
    listener_uid,
    pids_of,
    start_as,
    stop,
)

HUB_PREFIX = Path(os.environ.get("HUB_PREFIX", "/opt/slurm-gateway/hub"))
# The hub's public port (its proxy); +1 the hub's API, +2 the proxy's API. The users' servers
# get ports the hub picks.
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


def hub_processes(user: str) -> list[int]:
    """The user's processes run from the hub's venv: servers and their kernels."""
    return pids_of(pwd.getpwnam(user).pw_uid, str(HUB_PREFIX / "venv"))


def leftover_hub_processes() -> dict[int, str]:
    """alice's and bob's servers and kernels still running after the hub's ``down``
    (waited for), killed: pid -> command line."""
    wait_until(lambda: not any(hub_processes(user) for user in USERS), 30)
    left = {pid: cmdline(pid) for user in USERS for pid in hub_processes(user)}
    for pid in left:
        kill_exact(descendants(pid))
    return left


@pytest.fixture(scope="module")
def hub():
    """The hub, up for the module (alice and bob may log in), then down, whatever happened;
    a server or kernel of theirs still running after that is killed and fails the test."""
    try:
        hub_script("up")
        yield Hub(HUB_URL)
    finally:
        try:
            hub_script("down")
        finally:
            left = leftover_hub_processes()
            assert not left, f"still running after the hub's down (killed): {left}"


@pytest.fixture(scope="module")
def passwords(hub) -> dict[str, str]:
    text = (HUB_PREFIX / "secrets" / "passwords").read_text()
    return dict(line.split(":", 1) for line in text.split())


def hub_gateway_config() -> str:
    """The gateway's config lines for the hub: the hub's API and the gateway's service name
    there (the gateway asks the hub about each user's token with that token itself)."""
    return f"""
    c.SlurmGateway.authenticator_class = "slurm_gateway.hub_auth.JupyterHubAuthenticator"
    c.JupyterHubAuthenticator.jupyterhub_api_url = "{HUB_URL}/hub/api"
    c.JupyterHubAuthenticator.jupyterhub_service_name = "dask-gateway"
    """


def notebook(hub: Hub, user: str, password: str, opened: list[SingleUser]) -> SingleUser:
    """Log ``user`` in, start their server through the hub's API and a kernel in it (the
    server's ``kernels[0]``); the server goes into ``opened`` once it may exist."""
    token = hub.user_token(user, password, note="test_jupyterhub")
    server = hub.server(user, token)
    opened.append(server)
    hub.start_server(user, token)
    server.start_kernel()
    return server


def cell(server: SingleUser, kernel: str, code: str, timeout: float = 300) -> dict:
    """Run a cell; it prints one JSON line last, returned here."""
    out = server.run(kernel, code, timeout)
    assert out.error is None, f"{out.error}\n{''.join(out.traceback)[-3000:]}\n{out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1])


# Run in alice's kernel after the test, whatever happened: every cluster of hers goes.
STOP_ALICES_CLUSTERS = """
try:
    gateway
except NameError:
    from dask_gateway import Gateway
    gateway = Gateway()
for c in gateway.list_clusters():
    gateway.stop_cluster(c.name)
"""


def stop_alices_clusters(server: SingleUser, kernel: str) -> None:
    out = server.run(kernel, STOP_ALICES_CLUSTERS, timeout=120)
    if out.error is not None:
        raise HarnessError(f"{out.error}\n{''.join(out.traceback)[-2000:]}")


def close_notebooks(servers: list[SingleUser]) -> list[str]:
    """After the test: interrupt alice's kernel and stop her clusters from it (bounded), shut
    the kernels down, stop the servers. Returns what failed (each step is tried)."""
    problems = []

    def attempt(what: str, step, *args) -> None:
        try:
            step(*args)
        except Exception as exc:  # noqa: BLE001 (the other steps still run)
            problems.append(f"{what}: {type(exc).__name__}: {exc}")

    for server in servers:
        if server.user == "alice" and server.kernels:
            kernel = server.kernels[0]
            attempt("interrupting alice's kernel", server.interrupt_kernel, kernel)
            attempt("stopping alice's clusters", stop_alices_clusters, server, kernel)
        for kernel in list(server.kernels):
            attempt(f"shutting down {server.user}'s kernel", server.shutdown_kernel, kernel)
        attempt(
            f"stopping {server.user}'s server", server.hub.stop_server, server.user, server.token
        )
    return problems


# A process that listens on a port and prints whatever connects (the squatter test).
SQUATTER_PORT = HUB_PORT + 5
SQUATTER = """
import socket
server = socket.socket()
server.bind(("127.0.0.1", {port}))
server.listen()
print("connected:", server.accept(), flush=True)
"""


def gateway_status(gateway, token: str) -> int:
    """The gateway's answer to one cluster listing with ``token`` as a hub token."""
    url = f"{gateway.address}/api/v1/clusters/"
    return request(url, headers={"Authorization": f"jupyterhub {token}"})[0]


def is_dask_dashboard(page: str) -> bool:
    """The page is Dask's dashboard (a Bokeh application titled Dask's)."""
    return "Dask" in page and "bokeh" in page.lower()


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
    dashboard_page = response.read(1_000_000).decode(errors="replace")
print(json.dumps(dict(
    name=cluster.name, uid=os.getuid(), task_uids=sorted(set(task_uids)), dashboard=dashboard,
    dashboard_page=dashboard_page,
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

BOB_PRELUDE = "import gc, json, os\nfrom dask_gateway import Gateway\n\n" + ERROR_OF
BOB_TRIES = """
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

    servers: list[SingleUser] = []
    try:
        alice_server = notebook(hub, "alice", passwords["alice"], servers)
        alice_kernel = alice_server.kernels[0]
        assert any("jupyterhub-singleuser" in cmdline(pid) for pid in hub_processes("alice")), (
            "alice's server does not run as alice"
        )
        alice = cell(alice_server, alice_kernel, ALICE_GUIDE.format(conda_env=alice_env))
        page = alice.pop("dashboard_page")
        assert (alice["uid"], alice["task_uids"]) == (alice_uid, [alice_uid])
        assert (alice["auth"], alice["address"]) == ("JupyterHubAuth", GATEWAY_ADDRESS)
        assert alice["dashboard"] == 200 and alice["link"].startswith(GATEWAY_ADDRESS), alice
        assert is_dask_dashboard(page), page[:2000]
        with urllib.request.urlopen(alice["link"], timeout=30) as response:  # through the proxy
            assert response.status == 200
            page = response.read(1_000_000).decode(errors="replace")
        assert is_dask_dashboard(page), page[:2000]
        assert any("scheduler" in line for line in user_jobs("alice")), user_jobs("alice")

        bob_server = notebook(hub, "bob", passwords["bob"], servers)
        bob_tries = BOB_PRELUDE + BOB_TRIES.format(name=alice["name"])
        bob = cell(bob_server, bob_server.kernels[0], bob_tries)
        assert bob["uid"] == bob_uid and alice["name"] not in bob["listed"]
        assert_refused(bob, ("connect", "scale", "adapt", "stop"))

        after = cell(alice_server, alice_kernel, ALICE_AFTER)
        assert after["still_listed"] and after["after"] == alice_uid
        assert alice["name"] not in after["left"]
    finally:  # whatever happened: her clusters, the kernels and the servers go
        problems = close_notebooks(servers)
    assert not problems, problems
    assert wait_until(lambda: not user_jobs("alice"), 60), user_jobs("alice")


def test_hub_login_takes_only_the_users_own_password(hub, passwords):
    """The hub's login is real (PAM): a wrong password, or another user's, is refused."""
    with pytest.raises(HarnessError, match="login as alice refused"):
        hub.login("alice", passwords["alice"] + "x")
    with pytest.raises(HarnessError, match="login as alice refused"):
        hub.login("alice", passwords["bob"])
    assert hub.login("alice", passwords["alice"]).xsrf  # her own is taken


def test_no_password_goes_to_a_port_squatter(hub, passwords, tmp_path):
    """mallory listening on a loopback port (as anyone may) gets no login sent there: the
    harness sends passwords only where root listens."""
    squatter = start_as(
        "mallory",
        ["/usr/bin/python3", "-c", SQUATTER.format(port=SQUATTER_PORT)],
        tmp_path / "squatter.log",
    )
    try:
        mallory = pwd.getpwnam("mallory").pw_uid
        assert wait_until(lambda: listener_uid(SQUATTER_PORT) == mallory, 10)
        with pytest.raises(HarnessError, match=f"uid {mallory}, not root"):
            Hub(f"http://127.0.0.1:{SQUATTER_PORT}").login("alice", passwords["alice"])
    finally:
        stop(squatter)
    assert (tmp_path / "squatter.log").read_text() == ""  # no connection reached it


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
    status, model = hub.whoami(admin)
    assert status == 200 and model["kind"] == "service", (status, model)  # valid at the hub
    assert gateway_status(gateway, admin) == 401
    assert wait_until(lambda: "does not know this token" in gateway.log_tail(200), 10)
    logged = gateway.log.read_bytes()[offset:].decode(errors="replace")
    assert "may not use the service dask-gateway" in logged
    for token in (short_lived, forged, admin):
        assert token not in logged
