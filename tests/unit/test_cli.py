"""The slurm-gateway command: documented config, client config for Gateway()."""

import subprocess
import sys
import textwrap

import yaml

from slurm_gateway.backend import SlurmBackend
from slurm_gateway.cluster_config import SlurmClusterConfig


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-c", "from slurm_gateway.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_generate_config_documents_every_option():
    out = _cli("--generate-config")
    assert out.returncode == 0, out.stderr
    for cls in (SlurmBackend, SlurmClusterConfig):
        for name, trait in cls.class_traits(config=True).items():
            assert f"c.{cls.__name__}.{name} =" in out.stdout, name
            assert trait.help, f"{cls.__name__}.{name} has no help text"


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


def test_client_config_refuses_an_unreadable_config(tmp_path):
    out = _cli("client-config", "-f", str(tmp_path / "missing.py"))
    assert out.returncode != 0
    assert "cannot read" in out.stderr + out.stdout
