"""The ``slurm-gateway`` command: run the gateway or its proxy, write a documented config file,
print the client config, check an install (``check``: :mod:`slurm_gateway.preflight`)."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import stat
import sys
from pathlib import Path

from dask_gateway_server.app import DaskGateway
from dask_gateway_server.auth import (
    JupyterHubAuthenticator,
    KerberosAuthenticator,
    SimpleAuthenticator,
)
from dask_gateway_server.proxy import Proxy
from dask_gateway_server.proxy.core import ProxyApp
from dask_gateway_server.traitlets import Application
from traitlets import Bool, Unicode, default
from traitlets.config import Config

from . import __version__
from .backend import SlurmBackend
from .cluster_config import SlurmClusterConfig
from .metrics_service import MetricsService
from .munge_auth import MungeAuthenticator, normalize_origin
from .settings import SlurmBackendSettings
from .ssh_transport import SSHSudoRunner
from .state import read_or_create_secret
from .transport import LocalSudoRunner

DEFAULT_CONFIG = "/etc/slurm-gateway/config.py"
#: The proxy token's path in the state directory, where a gateway and a proxy run by hand as
#: the same account share it (the shipped units pass it as a credential, see
#: :data:`PROXY_TOKEN_CREDENTIAL`).
PROXY_TOKEN = Path("proxy", "proxy-token")
#: The name of the proxy token among a systemd unit's credentials (``LoadCredential=``): the
#: shipped units run the proxy and the gateway as different accounts, which share no file.
PROXY_TOKEN_CREDENTIAL = "proxy-token"
CONFIG_FILE_MODE = 0o640

_AUTH_TYPES = {
    "SimpleAuthenticator": "basic",
    "JupyterHubAuthenticator": "jupyterhub",
    "KerberosAuthenticator": "kerberos",
    "MungeAuthenticator": "slurm_gateway_client.MungeAuth",
}


def client_auth_lines(auth_name: str, config: Config, address: str) -> list[str]:
    """The ``auth:`` section of the client config, for the gateway's authenticator class.

    For munge, warns on stderr when the origin of ``address`` (the printed one) is not one of
    the gateway's ``MungeAuthenticator.audiences`` (clients bind credentials to it), or is
    plain http to another host (clients refuse to send credentials there)."""
    short_name = auth_name.rsplit(".", 1)[-1]
    lines = ["  auth:", f"    type: {_AUTH_TYPES.get(short_name, 'basic')}"]
    if short_name == "MungeAuthenticator":
        munge = config.MungeAuthenticator
        default_account = MungeAuthenticator.service_account.default_value
        kwargs = {"service_account": munge.get("service_account", default_account)}
        lines.append(f"    kwargs: {json.dumps(kwargs)}")
        try:
            origin = normalize_origin(address)
        except ValueError:
            origin = address
        if origin.startswith("http://") and not re.match(
            r"http://(127\.|\[::1\]|localhost:)", origin
        ):
            print(
                f"warning: {origin} is plain http: clients send munge credentials only over "
                "https or to a loopback address (set c.Proxy.tls_cert and c.Proxy.tls_key)",
                file=sys.stderr,
            )
        audiences = []
        for url in munge.get("audiences", []):
            try:
                audiences.append(normalize_origin(url))
            except ValueError:
                pass  # the gateway refuses to start with it; the warning below says enough
        if origin not in audiences:
            print(
                f"warning: {origin} is not in MungeAuthenticator.audiences {audiences}: the "
                f"gateway refuses credentials made for it (add it, or use --public-host)",
                file=sys.stderr,
            )
    return lines


def write_config_file(path: str, text: str, overwrite: bool = False) -> None:
    """Write ``text`` to ``path`` with mode 0640 (the config may hold secrets).

    Without ``overwrite`` an existing file (or link) is left alone: :class:`FileExistsError`.
    An overwritten file keeps its owner and group but gets mode 0640 too."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, CONFIG_FILE_MODE)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, CONFIG_FILE_MODE)  # whatever the umask, or the old file's mode, was
        f.write(text)


class GenerateConfig(Application):
    """Print or write a config file with every option documented."""

    name = "slurm-gateway generate-config"
    version = __version__
    description = f"""Print a config file with every option of the gateway documented, or
    write it to a file (mode 0640; the gateway reads {DEFAULT_CONFIG} unless given -f)."""
    examples = "\n".join(  # one command a line, without indentation (--help indents them)
        [f"slurm-gateway generate-config -o {DEFAULT_CONFIG}", "slurm-gateway generate-config"]
    )

    output = Unicode(
        "", help="Write the config to this file (mode 0640) instead of printing it.", config=True
    )
    force = Bool(False, help="Overwrite the output file if it exists.", config=True)
    aliases = {"o": "GenerateConfig.output", "output": "GenerateConfig.output"}
    flags = {
        "force": ({"GenerateConfig": {"force": True}}, "Overwrite the output file if it exists.")
    }

    def start(self) -> None:
        gateway = self.parent if isinstance(self.parent, SlurmGateway) else SlurmGateway()
        text = gateway.generate_config_file()
        if not self.output:
            sys.stdout.write(text)
            return
        try:
            write_config_file(self.output, text, overwrite=self.force)
        except FileExistsError:
            self.exit(f"{self.output} already exists; use --force to overwrite it")
        except OSError as e:
            self.exit(f"cannot write {self.output}: {e.strerror or e}")
        print(f"Wrote the documented config to {self.output} (mode 0640)", file=sys.stderr)


class ClientConfig(Application):
    """Print the dask config that makes ``Gateway()`` with no arguments reach this gateway."""

    name = "slurm-gateway client-config"
    version = __version__
    description = """Print the client config of this gateway (install it as
    /etc/dask/gateway.yaml on the machines where users run notebooks)."""

    config_file = Unicode(DEFAULT_CONFIG, help="The gateway config file to read.", config=True)
    public_host = Unicode(
        help="Host name clients use to reach the proxy (default: this host's FQDN, "
        "or the proxy's own host when it listens on one address).",
        config=True,
    )
    aliases = {
        "f": "ClientConfig.config_file",
        "config": "ClientConfig.config_file",
        "public-host": "ClientConfig.public_host",
    }

    @default("public_host")
    def _default_public_host(self):
        return socket.getfqdn()

    def start(self) -> None:
        if not os.access(self.config_file, os.R_OK):
            self.exit(f"cannot read the gateway config {self.config_file}")
        self.load_config_file(self.config_file)
        proxy = self.config.Proxy
        host, _, port = str(proxy.get("address", ":8000")).rpartition(":")
        if host in ("", "0.0.0.0", "[::]"):
            host = self.public_host
        prefix = str(proxy.get("prefix", "")).rstrip("/")
        scheme = "https" if proxy.get("tls_cert") else "http"
        authenticator = self.config.SlurmGateway.get("authenticator_class", SimpleAuthenticator)
        auth_name = authenticator if isinstance(authenticator, str) else authenticator.__name__
        lines = [
            "# Dask Gateway client config for this site; install as /etc/dask/gateway.yaml",
            "gateway:",
            f"  address: {scheme}://{host}:{port}{prefix}",
        ]
        if proxy.get("tcp_address"):
            tcp_host, _, tcp_port = str(proxy.tcp_address).rpartition(":")
            if tcp_host in ("", "0.0.0.0", "[::]"):
                tcp_host = host
            lines.append(f"  proxy-address: tls://{tcp_host}:{tcp_port}")
        lines += client_auth_lines(auth_name, self.config, f"{scheme}://{host}:{port}")
        print("\n".join(lines))


def share_proxy_token(config: Config) -> None:
    """Give an externally managed proxy and the gateway the same API token.

    Unless the admin set one (``c.Proxy.api_token`` or ``DASK_GATEWAY_PROXY_TOKEN``), it is
    the systemd credential :data:`PROXY_TOKEN_CREDENTIAL` when the unit loads one (the
    shipped units: ``LoadCredential=``, each service gets a copy only its account reads), or
    else kept in the state directory (:data:`PROXY_TOKEN`), created there on first use: both
    find it without a secret in the config file."""
    if (
        not config.Proxy.get("externally_managed", False)
        or "api_token" in config.Proxy
        or os.environ.get("DASK_GATEWAY_PROXY_TOKEN")
    ):
        return
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        credential = Path(credentials) / PROXY_TOKEN_CREDENTIAL
        if credential.exists():
            token = credential.read_text().strip()
            if not token:
                raise ValueError(f"the proxy token credential {credential} is empty")
            config.Proxy.api_token = token
            return
    state_directory = config.SlurmBackend.get(
        "state_directory", SlurmBackend.state_directory.default_value
    )
    token = read_or_create_secret(
        Path(state_directory) / PROXY_TOKEN, lambda: secrets.token_hex(32).encode()
    )
    config.Proxy.api_token = token.decode()


class ProxyCommand(ProxyApp):
    """Run the proxy as a service of its own (with ``c.Proxy.externally_managed = True``).

    Users' connections to their schedulers and dashboards go through the proxy: run apart
    from the gateway, they are not cut when the gateway restarts."""

    name = "slurm-gateway proxy"
    examples = f"slurm-gateway proxy -f {DEFAULT_CONFIG}"
    config_file = Unicode(DEFAULT_CONFIG, help="The gateway config file to read.", config=True)
    aliases = {
        "f": "ProxyCommand.config_file",
        "config": "ProxyCommand.config_file",
        "log-level": "Proxy.log_level",
    }

    def start(self) -> None:
        os.umask(0o077)
        share_proxy_token(self.parent.config)
        super().start()


class SlurmGateway(DaskGateway):
    """Dask Gateway with the SLURM backend: Dask clusters as SLURM jobs of each user."""

    name = "slurm-gateway"
    version = __version__
    description = "Start the Dask Gateway server with the SLURM backend"
    examples = "\n".join(  # one command a line, without indentation (--help indents them)
        [
            f"slurm-gateway generate-config -o {DEFAULT_CONFIG}",
            f"slurm-gateway -f {DEFAULT_CONFIG}",
            f"slurm-gateway client-config -f {DEFAULT_CONFIG} > /etc/dask/gateway.yaml",
        ]
    )

    subcommands = {
        "generate-config": ("slurm_gateway.cli.GenerateConfig", GenerateConfig.__doc__),
        "client-config": ("slurm_gateway.cli.ClientConfig", ClientConfig.__doc__),
        "proxy": ("slurm_gateway.cli.ProxyCommand", ProxyCommand.__doc__.splitlines()[0]),
        "clusters": ("slurm_gateway.admin_cli.ClustersCommand", "List every user's clusters."),
        "stop": ("slurm_gateway.admin_cli.StopCommand", "Stop a cluster, with a reason."),
        "health": ("slurm_gateway.admin_cli.HealthCommand", "Health, with details (admins)."),
        "logs": ("slurm_gateway.admin_cli.LogsCommand", "Print your clusters' job logs."),
        "check": ("slurm_gateway.preflight.CheckCommand", "Check an install (as root or slurmgw)"),
    }

    config_file = Unicode(DEFAULT_CONFIG, help="The config file to load.", config=True)
    aliases = {
        **DaskGateway.aliases,
        "f": "SlurmGateway.config_file",  # so that --help shows this default
        "config": "SlurmGateway.config_file",
    }

    generate_config = Bool(
        False,
        help="Print a config file with every option documented, then exit "
        "(the same as the generate-config subcommand).",
        config=True,
    )
    allow_simple_authenticator = Bool(
        False,
        help="""Start even with SimpleAuthenticator (dask-gateway-server's default), which
        believes whatever user name a client sends. Never on a site: for tests that check
        what the backend does with such names.""",
        config=True,
    )
    flags = {
        "generate-config": (
            {"SlurmGateway": {"generate_config": True}},
            "Print a config file with every option documented, then exit "
            "(the same as the generate-config subcommand).",
        )
    }

    @default("backend_class")
    def _default_backend_class(self):
        return "slurm_gateway.backend.SlurmBackend"

    @default("classes")
    def _default_classes(self):
        return [
            SlurmGateway,
            SlurmBackend,
            SlurmClusterConfig,
            LocalSudoRunner,
            SSHSudoRunner,
            Proxy,
            SimpleAuthenticator,
            JupyterHubAuthenticator,
            KerberosAuthenticator,
            MungeAuthenticator,
        ]

    def _classes_with_config_traits(self, classes=None):
        # SlurmBackendSettings and MetricsService only declare SlurmBackend's options: without
        # them, the generated config documents them in full as c.SlurmBackend.<name>.
        for cls in super()._classes_with_config_traits(classes):
            if cls not in (SlurmBackendSettings, MetricsService):
                yield cls

    def initialize(self, argv: list[str] | None = None) -> None:
        # Parse the command line only: --generate-config must work without a config file.
        Application.initialize(self, argv)
        if self.generate_config:
            sys.stdout.write(self.generate_config_file())
            self.exit(0)
        if self.subapp is None:
            # Everything the gateway writes (database, keys, its part of job submissions)
            # is private to the service account.
            os.umask(0o077)
            super().initialize(argv)
            self._check_config_file()
            self._refuse_trusted_names()
            share_proxy_token(self.config)

    def _check_config_file(self) -> None:
        try:
            mode = os.stat(self.config_file).st_mode
        except FileNotFoundError:
            self.log.warning(
                "There is no config file %s: running with the defaults "
                "(slurm-gateway generate-config -o %s writes one to edit).",
                self.config_file,
                self.config_file,
            )
            return
        except OSError:
            return
        if mode & stat.S_IROTH:
            self.log.warning(
                "The config file %s is readable by every user; if it holds secrets "
                "(tokens, passwords), make it readable by the service account only "
                "(chown root:SERVICE-GROUP, chmod 640).",
                self.config_file,
            )

    def _refuse_trusted_names(self) -> None:
        """Refuse to start with an authenticator that believes any name (dask-gateway-
        server's default), unless ``allow_simple_authenticator`` says it is on purpose."""
        if not issubclass(self.authenticator_class, SimpleAuthenticator):
            return
        why = (
            f"The authenticator is {self.authenticator_class.__name__}, which believes "
            "whatever user name a client sends: any user could start, scale and stop "
            "clusters as any other, and run jobs as them. Set "
            'c.SlurmGateway.authenticator_class (README, "Connect your site\'s users")'
        )
        if not self.allow_simple_authenticator:
            self.log.critical("%s; not starting.", why)
            self.exit(1)
        self.log.warning("%s (allowed by allow_simple_authenticator: tests only).", why)


main = SlurmGateway.launch_instance
