"""The slurm-gateway command: documented config, client config for Gateway()."""

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from slurm_gateway.backend import SlurmBackend
from slurm_gateway.cli import DEFAULT_CONFIG, ClientConfig, ProxyCommand, SlurmGateway
from slurm_gateway.cluster_config import SlurmClusterConfig
from slurm_gateway.munge_auth import MungeAuthenticator

REPO = Path(__file__).resolve().parents[2]


def _cli(*args, umask=-1):
    return subprocess.run(
        [sys.executable, "-c", "from slurm_gateway.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=60,
        umask=umask,
    )


def _words(text):
    return " ".join(text.split())


@pytest.mark.parametrize("command", ["generate-config", "--generate-config"])
def test_generate_config_documents_every_option(command):
    out = _cli(command)
    assert out.returncode == 0, out.stderr
    comments = _words(
        " ".join(line.lstrip("#") for line in out.stdout.splitlines() if line.startswith("#"))
    )
    for cls in (SlurmBackend, SlurmClusterConfig):
        for name, trait in cls.class_traits(config=True).items():
            assert f"c.{cls.__name__}.{name} =" in out.stdout, name
            assert trait.help, f"{cls.__name__}.{name} has no help text"
            assert _words(trait.help) in comments, f"{cls.__name__}.{name}'s help is missing"
    for name, trait in MungeAuthenticator.class_own_traits(config=True).items():
        assert f"c.MungeAuthenticator.{name} =" in out.stdout, name
        assert trait.help, f"MungeAuthenticator.{name} has no help text"
        assert _words(trait.help) in comments, f"MungeAuthenticator.{name}'s help is missing"


def test_generate_config_subcommand_and_flag_print_the_same():
    subcommand, flag = _cli("generate-config"), _cli("--generate-config")
    assert subcommand.returncode == flag.returncode == 0, subcommand.stderr + flag.stderr
    assert subcommand.stdout == flag.stdout
    assert subcommand.stdout.startswith("# Configuration file for slurm-gateway.")


def test_generate_config_writes_a_file_with_mode_0640(tmp_path):
    target = tmp_path / "config.py"
    # Neither a strict umask nor a lax one changes the mode.
    out = _cli("generate-config", "-o", str(target), umask=0o077)
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert target.read_text() == _cli("generate-config").stdout

    lax = tmp_path / "lax.py"
    assert _cli("generate-config", "--output", str(lax), umask=0).returncode == 0
    assert stat.S_IMODE(os.stat(lax).st_mode) == 0o640


def test_generate_config_refuses_to_overwrite_without_force(tmp_path):
    target = tmp_path / "config.py"
    target.write_text("c.SlurmBackend.allowed_group = 'site-edits'\n")
    target.chmod(0o644)
    out = _cli("generate-config", "-o", str(target))
    assert out.returncode != 0
    assert "--force" in out.stderr
    assert target.read_text() == "c.SlurmBackend.allowed_group = 'site-edits'\n"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644

    out = _cli("generate-config", "-o", str(target), "--force")
    assert out.returncode == 0, out.stderr
    assert target.read_text() == _cli("generate-config").stdout
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640


def test_generate_config_reports_a_missing_directory(tmp_path):
    out = _cli("generate-config", "-o", str(tmp_path / "missing" / "config.py"))
    assert out.returncode != 0
    assert "cannot write" in out.stderr


@pytest.mark.parametrize("app_class", [SlurmGateway, ClientConfig, ProxyCommand])
def test_every_command_reads_the_same_config_file_by_default(app_class):
    assert DEFAULT_CONFIG == "/etc/slurm-gateway/config.py"
    app = app_class()
    app.parse_command_line([])
    assert app.config_file == DEFAULT_CONFIG
    app = app_class()
    app.parse_command_line(["-f", "/srv/gateway.py"])
    assert app.config_file == "/srv/gateway.py"


def test_client_config_points_gateway_at_the_proxy(tmp_path):
    config = tmp_path / "config.py"
    config.write_text(
        textwrap.dedent("""
        c = get_config()
        c.Proxy.address = "127.0.0.1:8123"
        c.SlurmGateway.authenticator_class = "dask_gateway_server.auth.KerberosAuthenticator"
        """)
    )
    out = _cli("client-config", "-f", str(config))
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout) == {
        "gateway": {"address": "http://127.0.0.1:8123", "auth": {"type": "kerberos"}}
    }


def test_client_config_names_the_munge_client_class_and_its_kwargs(tmp_path):
    config = tmp_path / "config.py"
    config.write_text(
        textwrap.dedent("""
        c = get_config()
        c.Proxy.address = ":8123"
        c.Proxy.tls_cert = "/etc/cert.pem"
        c.SlurmGateway.authenticator_class = "slurm_gateway.munge_auth.MungeAuthenticator"
        c.MungeAuthenticator.service_account = "dask-svc"
        c.MungeAuthenticator.audiences = ["https://LOGIN1.example.org:8123/"]
        """)
    )
    out = _cli("client-config", "-f", str(config), "--public-host", "login1.example.org")
    assert out.returncode == 0, out.stderr
    gateway = yaml.safe_load(out.stdout)["gateway"]
    # No audience: the client binds each credential to the origin it contacts.
    assert gateway["auth"] == {
        "type": "slurm_gateway_client.MungeAuth",
        "kwargs": {"service_account": "dask-svc"},
    }
    assert gateway["address"] == "https://login1.example.org:8123"
    assert "warning" not in out.stderr
    out = _cli("client-config", "-f", str(config), "--public-host", "login2.example.org")
    assert "https://login2.example.org:8123 is not in MungeAuthenticator.audiences" in out.stderr


@pytest.mark.parametrize(
    "config", ["scripts/dev-gateway-config.py", "scripts/docker/gateway-config.py"]
)
def test_the_dev_setups_use_munge_at_the_address_they_give_clients(config):
    # The demo's and the containers' configs: munge, and clients sent to one of the audiences
    # (the containers' clients run beside the proxy and reach it on loopback).
    out = _cli("client-config", "-f", str(REPO / config), "--public-host", "127.0.0.1")
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr, out.stderr
    assert yaml.safe_load(out.stdout) == {
        "gateway": {
            "address": "http://127.0.0.1:8000",
            "auth": {
                "type": "slurm_gateway_client.MungeAuth",
                "kwargs": {"service_account": "slurmgw"},
            },
        }
    }


def test_client_config_refuses_an_unreadable_config(tmp_path):
    out = _cli("client-config", "-f", str(tmp_path / "missing.py"))
    assert out.returncode != 0
    assert "cannot read" in out.stderr + out.stdout


def test_the_gateway_warns_when_its_config_file_is_missing(tmp_path, caplog):
    app = SlurmGateway(config_file=str(tmp_path / "missing.py"))
    app.log.propagate = True
    with caplog.at_level("WARNING"):
        app._check_config_file()
    assert "no config file" in caplog.text
    assert "generate-config" in caplog.text


@pytest.mark.parametrize(
    "authenticator, allowed, outcome",
    [
        (None, False, "refused"),  # dask-gateway-server's default
        ("dask_gateway_server.auth.SimpleAuthenticator", False, "refused"),
        ("dask_gateway_server.auth.SimpleAuthenticator", True, "warned"),
        ("slurm_gateway.munge_auth.MungeAuthenticator", False, "quiet"),
        ("slurm_gateway.hub_auth.JupyterHubAuthenticator", False, "quiet"),
    ],
)
def test_the_gateway_refuses_to_believe_any_name(authenticator, allowed, outcome, caplog):
    app = SlurmGateway(allow_simple_authenticator=allowed)
    if authenticator:
        app.authenticator_class = authenticator
    app.log.propagate = True
    with caplog.at_level("WARNING"):
        try:
            app._refuse_trusted_names()
            result = "warned" if caplog.text else "quiet"
        except SystemExit as exit:
            assert exit.code == 1
            result = "refused"
    assert result == outcome
    if outcome != "quiet":
        assert "believes whatever user name" in caplog.text
        assert "Connect your site's users" in caplog.text


def test_generate_config_names_backend_options_as_admins_set_them():
    # The options are declared in settings.py's SlurmBackendSettings; admins set them as
    # c.SlurmBackend.<name>, and the generated file must say so with their full help.
    out = _cli("generate-config")
    assert "c.SlurmBackendSettings." not in out.stdout
    section = out.stdout.split("# SlurmBackend(", 1)[1]
    assert (
        "## Seconds between checks that SLURM answers"
        in section.split("# c.SlurmBackend.slurm_poll")[0]
    )
