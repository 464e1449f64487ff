"""deploy/: the systemd units of the gateway and the proxy and the logrotate rule, shipped
as files. The README shows each exactly; their paths are the README's install paths and
the code's defaults; systemd and logrotate accept them; the gateway's unit keeps sudo
working (sudo is how every cluster starts)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from slurm_gateway.cli import DEFAULT_CONFIG, PROXY_TOKEN_CREDENTIAL
from slurm_gateway.settings import SlurmBackendSettings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
README = (REPO / "README.md").read_text()
GATEWAY_UNIT = DEPLOY / "slurm-gateway.service"
PROXY_UNIT = DEPLOY / "slurm-gateway-proxy.service"
LOGROTATE = DEPLOY / "logrotate"
SHIPPED = (GATEWAY_UNIT, PROXY_UNIT, LOGROTATE)

# Settings with which systemd turns on NoNewPrivileges for a service without CAP_SYS_ADMIN
# (any User= service), per systemd.exec(5) of systemd 252; with it, sudo refuses to run.
IMPLY_NO_NEW_PRIVILEGES = {
    "DynamicUser",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "PrivateDevices",
    "ProtectClock",
    "ProtectHostname",
    "ProtectKernelLogs",
    "ProtectKernelModules",
    "ProtectKernelTunables",
    "RestrictAddressFamilies",
    "RestrictNamespaces",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "SystemCallArchitectures",
    "SystemCallFilter",
}


def unit_settings(path: Path) -> dict[str, str]:
    """``Section.Key`` -> value of a unit file (each key appears once in ours)."""
    settings, section = {}, ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        assert f"{section}.{key}" not in settings, f"{path.name}: {key} twice"
        settings[f"{section}.{key}"] = value
    return settings


def _fenced_blocks(text: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)


def _readme_path(pattern: str) -> str:
    match = re.search(pattern, README)
    assert match, f"README.md no longer says {pattern!r}"
    return match.group(1)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_the_readme_shows_each_file_exactly(path):
    text = path.read_text()
    assert text in _fenced_blocks(README), (
        f"README.md should show deploy/{path.name} exactly, in a fenced block:\n{text}"
    )
    assert text.endswith("\n") and "\r" not in text and "\t" not in text


def test_the_units_run_what_the_readme_installs_where_it_installs_it():
    venv = _readme_path(r"python3 -m venv (\S+)")
    config = _readme_path(r"One file, `(/[^`]+)`")
    state = _readme_path(r"install -d -m 0700 -o \S+ (\S+)\s")
    account = _readme_path(r"useradd --system .* (\S+)\n")
    assert config == DEFAULT_CONFIG
    assert state == SlurmBackendSettings.state_directory.default_value
    gateway, proxy = unit_settings(GATEWAY_UNIT), unit_settings(PROXY_UNIT)
    assert gateway["Service.ExecStart"].split() == [f"{venv}/bin/slurm-gateway", "-f", config]
    assert proxy["Service.ExecStart"].split() == [
        f"{venv}/bin/slurm-gateway",
        "proxy",
        "-f",
        config,
    ]
    # The proxy runs as an account of its own, in the gateway's group (the config file's),
    # and sees nothing of the state directory.
    proxy_group, proxy_account = re.findall(r"--gid (\S+) (\S+)\s+# the proxy's own", README)[0]
    assert proxy_group == account
    assert proxy["Service.InaccessiblePaths"] == state
    sudo_account = (DEPLOY / "sudoers").read_text().split("Defaults:", 1)[1].split()[0]
    assert gateway["Service.User"] == gateway["Service.Group"] == account == sudo_account
    assert proxy["Service.User"] == proxy_account != account
    assert proxy["Service.Group"] == proxy_group
    # Both get the proxy's API token from the file the README has the admin make.
    token = _readme_path(r"openssl rand -hex 32 >(/\S+)\)")
    for unit in (gateway, proxy):
        assert unit["Service.LoadCredential"] == f"{PROXY_TOKEN_CREDENTIAL}:{token}"
        assert unit["Service.Restart"] == "on-failure"
        assert unit["Service.UMask"] == "0077"  # the gateway's secrets stay private
        assert unit["Install.WantedBy"] == "multi-user.target"


def test_the_gateways_hardening_leaves_sudo_working():
    gateway = unit_settings(GATEWAY_UNIT)
    keys = {key.split(".", 1)[1] for key in gateway}
    assert "NoNewPrivileges" not in keys
    assert not keys & IMPLY_NO_NEW_PRIVILEGES, keys & IMPLY_NO_NEW_PRIVILEGES
    # The bounding set also limits what the setuid sudo gets.
    assert "CapabilityBoundingSet" not in keys and "PrivateUsers" not in keys
    assert gateway["Service.ProtectSystem"] == "full" and gateway["Service.PrivateTmp"] == "yes"
    comments = " ".join(GATEWAY_UNIT.read_text().replace("#", "").split())
    assert "no NoNewPrivileges=yes" in comments and "sudo" in comments
    # What PrivateTmp isolates, said as it is: the service from the host, not users apart.
    assert "one /tmp for the whole service, not one per user" in comments


def test_the_proxy_binds_a_privileged_port_and_nothing_else():
    proxy = unit_settings(PROXY_UNIT)
    assert proxy["Service.AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert proxy["Service.CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert proxy["Service.NoNewPrivileges"] == "yes"
    assert proxy["Service.ProtectSystem"] == "strict"


def test_the_proxy_cannot_reach_what_else_the_service_account_holds():
    # Not the gateway's account: a process of that account could signal the gateway and
    # open /proc/PID/root, /fd, /mem, /environ of the gateway's processes, and through root
    # the state directory whatever the proxy's unit hides. Besides: no Unix socket (the
    # admin socket), no view of other accounts' processes nor of IPC, only the system calls
    # of an ordinary service.
    proxy, gateway = unit_settings(PROXY_UNIT), unit_settings(GATEWAY_UNIT)
    assert proxy["Service.User"] != gateway["Service.User"]
    assert proxy["Service.InaccessiblePaths"] == SlurmBackendSettings.state_directory.default_value
    assert proxy["Service.RestrictAddressFamilies"].split() == ["AF_INET", "AF_INET6"]
    assert proxy["Service.SystemCallFilter"] == "@system-service"
    assert proxy["Service.PrivateIPC"] == "yes"
    assert proxy["Service.ProtectProc"] == "invisible"
    assert "ReadWritePaths" not in {key.split(".", 1)[1] for key in proxy}


def test_systemd_accepts_the_units(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (package systemd): cannot verify units")
    for unit in (GATEWAY_UNIT, PROXY_UNIT):
        program = unit_settings(unit)["Service.ExecStart"].split()[0]
        if not os.access(program, os.X_OK):
            pytest.skip(
                f"{program} is not installed (scripts/test.sh installs it): "
                "systemd-analyze verify refuses a unit whose program is missing"
            )
    for unit in (GATEWAY_UNIT, PROXY_UNIT):
        shutil.copy(unit, tmp_path / unit.name)
    out = subprocess.run(
        [analyze, "verify", *(str(tmp_path / u.name) for u in (GATEWAY_UNIT, PROXY_UNIT))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # A typo (an unknown key, a bad value) is a warning on stderr, not a failure.
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


def test_logrotate_never_touches_the_users_log_root():
    rules = [line for line in LOGROTATE.read_text().splitlines() if line.startswith("/")]
    assert rules == ["/var/log/slurm-gateway-service/*.log {"]
    assert "log_retention_days" in LOGROTATE.read_text()


def test_logrotate_rotates_a_log_the_service_keeps_appending_to(tmp_path):
    logrotate = shutil.which("logrotate") or shutil.which("logrotate", path="/usr/sbin")
    if logrotate is None:
        pytest.skip("logrotate is not installed (package logrotate; dev-cluster.sh installs it)")
    directory = tmp_path / "service-logs"
    directory.mkdir(mode=0o750)
    config = tmp_path / "logrotate.conf"
    config.write_text(
        LOGROTATE.read_text().replace("/var/log/slurm-gateway-service", str(directory))
    )
    config.chmod(0o644)
    log = directory / "gateway.log"
    # As systemd's StandardOutput=append: opens it, and keeps it open.
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        os.write(fd, b"before rotation\n")
        out = subprocess.run(
            [logrotate, "--force", "--state", str(tmp_path / "state"), str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        os.write(fd, b"after rotation\n")
    finally:
        os.close(fd)
    assert (directory / "gateway.log.1").read_text() == "before rotation\n"
    assert log.read_text() == "after rotation\n"  # no hole of NULs before it
