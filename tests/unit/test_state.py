"""The gateway's private files: refused when others could read them, created private."""

import os
import stat

import pytest
from traitlets.config import Config

from slurm_gateway.cli import PROXY_TOKEN, PROXY_TOKEN_CREDENTIAL, share_proxy_token
from slurm_gateway.state import ensure_private_directory, read_or_create_secret


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_state_directory_is_created_private_and_refused_when_open(tmp_path):
    state = tmp_path / "state"
    ensure_private_directory(state)
    assert _mode(state) == 0o700
    os.chmod(state, 0o755)
    with pytest.raises(PermissionError, match=f"chmod 700 {state}"):
        ensure_private_directory(state)


def test_secret_is_created_once_with_mode_600(tmp_path):
    path = tmp_path / "state" / "key"
    made = []

    def make():
        made.append(1)
        return b"s3cret\n"

    assert read_or_create_secret(path, make) == b"s3cret"
    assert read_or_create_secret(path, make) == b"s3cret"
    assert made == [1] and _mode(path) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["key"]  # no temporary file left
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match=f"chmod 600 {path}"):
        read_or_create_secret(path, make)


def _config(state, **proxy) -> Config:
    config = Config()
    config.SlurmBackend.state_directory = str(state)
    for name, value in proxy.items():
        setattr(config.Proxy, name, value)
    return config


def test_an_external_proxy_and_the_gateway_share_one_token(tmp_path, monkeypatch):
    monkeypatch.delenv("DASK_GATEWAY_PROXY_TOKEN", raising=False)
    gateway, proxy = (
        _config(tmp_path, externally_managed=True),
        _config(tmp_path, externally_managed=True),
    )
    share_proxy_token(gateway)
    share_proxy_token(proxy)
    assert len(gateway.Proxy.api_token) == 64
    assert gateway.Proxy.api_token == proxy.Proxy.api_token
    assert (tmp_path / PROXY_TOKEN).read_text() == gateway.Proxy.api_token
    assert _mode(tmp_path / PROXY_TOKEN) == 0o600
    assert _mode(tmp_path / PROXY_TOKEN.parent) == 0o700


def test_proxy_token_is_left_alone_when_set_or_not_needed(tmp_path, monkeypatch):
    monkeypatch.delenv("DASK_GATEWAY_PROXY_TOKEN", raising=False)
    child = _config(tmp_path)  # the gateway starts its own proxy: a fresh token each start
    share_proxy_token(child)
    assert "api_token" not in child.Proxy
    chosen = _config(tmp_path, externally_managed=True, api_token="abc")
    share_proxy_token(chosen)
    assert chosen.Proxy.api_token == "abc"
    assert not (tmp_path / PROXY_TOKEN).exists()


def test_the_units_proxy_token_credential_comes_first(tmp_path, monkeypatch):
    # The shipped units run the proxy and the gateway as different accounts: each gets the
    # token as a systemd credential, and neither touches the state directory for it.
    monkeypatch.delenv("DASK_GATEWAY_PROXY_TOKEN", raising=False)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / PROXY_TOKEN_CREDENTIAL).write_text("f00d" * 16 + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    state = tmp_path / "state"
    gateway, proxy = (
        _config(state, externally_managed=True),
        _config(state, externally_managed=True),
    )
    share_proxy_token(gateway)
    share_proxy_token(proxy)
    assert gateway.Proxy.api_token == proxy.Proxy.api_token == "f00d" * 16
    assert not state.exists()
    (credentials / PROXY_TOKEN_CREDENTIAL).write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        share_proxy_token(_config(state, externally_managed=True))
