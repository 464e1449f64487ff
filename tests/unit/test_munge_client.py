"""slurm_gateway_client.MungeAuth, the client side of munge authentication, with a fake munge."""

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import dask
import pytest
from dask_gateway.auth import get_auth
from slurm_gateway_client import MungeAuth, MungeAuthError, make_payload
from yarl import URL

CLIENT_DIR = Path(__file__).resolve().parents[2] / "client"
RESPONSE_401 = SimpleNamespace(url=URL("https://Login1.example.org:8443/api/v1/clusters/"))
ORIGIN = "https://login1.example.org:8443"


def _fake_munge(tmp_path, body='printf "MUNGE:QUJD:\\n"'):
    path = tmp_path / "munge"
    path.write_text(f'#!/bin/sh\necho "$@" > "$0.argv"\ncat > "$0.in"\n{body}\n')
    path.chmod(0o755)
    return path


def test_pre_request_sends_a_credential_restricted_to_the_service_account(tmp_path):
    munge = _fake_munge(tmp_path)
    auth = MungeAuth(service_account="root", munge=str(munge))
    headers, context = auth.pre_request(RESPONSE_401)
    assert headers == {"Authorization": "Munge MUNGE:QUJD:"} and context is None
    assert (tmp_path / "munge.argv").read_text().split() == ["--restrict-uid=0", "--ttl=60"]
    payload = (tmp_path / "munge.in").read_text()
    expected = r"slurm-gateway:https://login1\.example\.org:8443\ntime=\d+\nnonce=[0-9a-f]{32}"
    assert re.fullmatch(expected, payload)


def test_munge_is_looked_up_on_the_path(tmp_path, monkeypatch):
    _fake_munge(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    MungeAuth(service_account=4242).pre_request(RESPONSE_401)
    assert (tmp_path / "munge.argv").read_text().split()[0] == "--restrict-uid=4242"


def test_each_credential_has_its_own_nonce():
    first, second = make_payload("gw", now=1), make_payload("gw", now=1)
    assert first != second and first.startswith(b"slurm-gateway:gw\ntime=1\nnonce=")


def test_the_service_account_is_a_name_or_a_uid():
    assert MungeAuth(service_account="root").service_uid == 0
    assert MungeAuth(service_account="1234").service_uid == 1234
    with pytest.raises(MungeAuthError, match="service_account"):
        MungeAuth(service_account="no-such-account-x")


@pytest.mark.parametrize(
    "munge, body, message",
    [
        ("/nonexistent/munge", None, "not found: install munge"),
        (None, 'echo "munge: Error: Unable to access socket" >&2; exit 1', "Unable to access"),
        (None, "echo not-a-credential", "munge exited 0: no credential on its output"),
        (None, "sleep 5", "did not answer within 0.5 s"),
    ],
)
def test_munge_problems_are_clear_errors(tmp_path, munge, body, message):
    if munge is None:
        munge = str(_fake_munge(tmp_path, body))
    auth = MungeAuth(service_account=0, munge=munge, timeout=0.5)
    with pytest.raises(MungeAuthError, match=re.escape(message)):
        auth.pre_request(RESPONSE_401)


@pytest.mark.parametrize(
    "url", ["https://{HOME}:8443/", "ftp://gw.test/", "https:///api", "https://gw.test:99999/"]
)
def test_unusable_gateway_urls_are_refused_before_munge_runs(tmp_path, url):
    munge = _fake_munge(tmp_path)
    auth = MungeAuth(service_account=0, munge=str(munge))
    with pytest.raises(MungeAuthError):
        auth.pre_request(SimpleNamespace(url=url))  # str(resp.url) is what counts
    assert not (tmp_path / "munge.in").exists()


def test_gateway_yaml_selects_munge_auth_with_its_kwargs():
    config = {
        "gateway.auth.type": "slurm_gateway_client.MungeAuth",
        "gateway.auth.kwargs": {"service_account": "root", "ttl": 30},
    }
    with dask.config.set(config):
        auth = get_auth()
    assert isinstance(auth, MungeAuth)
    assert (auth.service_uid, auth.ttl) == (0, 30)


def test_the_client_package_needs_nothing_of_the_server():
    code = (
        "import sys, slurm_gateway_client\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('slurm_gateway', 'dask_gateway_server', 'sqlalchemy')]\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": str(CLIENT_DIR)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    pyproject = (CLIENT_DIR / "pyproject.toml").read_text()
    assert re.search(r'^dependencies = \["dask-gateway"\]$', pyproject, re.MULTILINE)
