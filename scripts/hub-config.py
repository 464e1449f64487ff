"""Print the JupyterHub config that scripts/jupyterhub.sh installs (from its environment).

The hub: PAM login for the listed users only, single-user servers spawned as those Unix users
by the LocalProcessSpawner (on random loopback ports), the gateway registered as the service
``dask-gateway`` (a name only: the gateway never calls the hub with a token of its own; the
service exists so that the scope ``access:services!service=dask-gateway`` does). Users may
use that service (the role ``user`` gets ``access:services!service=dask-gateway``), and so
may the token their server gets (``JUPYTERHUB_API_TOKEN``, which the notebook's ``Gateway()``
sends): the gateway's
``JupyterHubAuthenticator`` with ``jupyterhub_service_name = "dask-gateway"`` refuses tokens
without that scope. A second service, ``slurm-gateway-admin``, has a token and no roles: the
tests' example of a valid hub token that may not use the gateway.
"""

from __future__ import annotations

import os

SERVICE = "dask-gateway"
ADMIN_SERVICE = "slurm-gateway-admin"


def settings() -> dict:
    env = os.environ
    port = int(env["HUB_PORT"])
    prefix = env["HUB_PREFIX"]
    return {
        "prefix": prefix,
        "port": port,
        "users": env["HUB_USERS"].split(),
        "admin_token": env["HUB_ADMIN_TOKEN"],
        "dask_config": f"{prefix}/etc/dask" if env.get("HUB_GATEWAY_ADDRESS") else "",
    }


def config(s: dict) -> str:
    prefix, port = s["prefix"], s["port"]
    environment = {"PATH": f"{prefix}/venv/bin:/usr/local/bin:/usr/bin:/bin"}
    if s["dask_config"]:
        environment["DASK_CONFIG"] = s["dask_config"]
    return f'''# Written by scripts/jupyterhub.sh: edit the script's settings, not this file.
c = get_config()  # noqa: F821

c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{port + 1}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{port + 2}"
c.ConfigurableHTTPProxy.command = ["{prefix}/node_modules/.bin/configurable-http-proxy"]
c.ConfigurableHTTPProxy.pid_file = "{prefix}/state/jupyterhub-proxy.pid"
c.JupyterHub.db_url = "sqlite:///{prefix}/state/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{prefix}/state/jupyterhub_cookie_secret"
c.JupyterHub.cleanup_servers = True  # `down` stops the users' servers too

# A real login for this machine: the users' Unix passwords (PAM).
c.JupyterHub.authenticator_class = "pam"
c.PAMAuthenticator.open_sessions = False
c.Authenticator.allowed_users = {{{", ".join(map(repr, sorted(s["users"])))}}}

# Single-user servers run as the users themselves, from the hub's venv, on random ports.
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = ["{prefix}/venv/bin/jupyterhub-singleuser"]
c.Spawner.ip = "127.0.0.1"
c.Spawner.environment = {environment!r}
c.Spawner.start_timeout = 90
c.Spawner.http_timeout = 90

# The gateway, a hub service; users and their servers' tokens may use it.
c.JupyterHub.services = [
    {{"name": "{SERVICE}"}},
    {{"name": "{ADMIN_SERVICE}", "api_token": "{s["admin_token"]}"}},  # no roles
]
c.JupyterHub.load_roles = [
    {{"name": "user", "scopes": ["self", "access:services!service={SERVICE}"]}},
]
c.Spawner.server_token_scopes = [
    "users:activity!user",
    "access:servers!server",
    "access:services!service={SERVICE}",
]
'''


if __name__ == "__main__":
    print(config(settings()))
