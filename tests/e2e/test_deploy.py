"""The shipped files as the dev cluster runs them: the sudo rule is deploy/sudoers
(scripts/test.sh ran scripts/dev-cluster.sh up from this repository, which installs it
verbatim); the proxy runs as its unit has it, as another account than the gateway's with
the token as a credential (no systemd here: the harness starts both as the units would)."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from conftest import SERVICE_ACCOUNT, run

REPO = Path(__file__).resolve().parents[2]


def test_the_installed_sudo_rule_is_deploy_sudoers():
    installed = Path("/etc/sudoers.d/slurm-gateway")
    assert installed.read_bytes() == (REPO / "deploy" / "sudoers").read_bytes()
    info = os.lstat(installed)
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o440
    assert (info.st_uid, info.st_gid) == (0, 0)


def test_the_proxy_runs_as_another_account_with_the_token_as_a_credential(make_gateway):
    # As deploy/slurm-gateway-proxy.service runs it: an account that is not the gateway's
    # (nobody here, for slurmgw-proxy), in the gateway's group (for the config file), the
    # token a credential of its own. The gateway's routes reach the proxy (the health check
    # goes through it): the two agree on the token without sharing a file.
    gw = make_gateway(
        "",
        external_proxy=True,
        proxy_account=("nobody", SERVICE_ACCOUNT),
        proxy_token_credential=True,
    )
    assert gw.healthy()
    proxy_uid = os.stat(f"/proc/{gw.proxy_proc.pid}").st_uid
    assert proxy_uid == pwd.getpwnam("nobody").pw_uid
    assert not (gw.workdir / "state" / "proxy").exists()  # no token in the state directory
    # What the proxy's account cannot do, and the gateway's account (the old unit's) can:
    # read the gateway's state directory through /proc/PID/root, whatever a unit hides.
    through_root = f"/proc/{gw.proc.pid}/root{gw.workdir / 'state'}"
    as_proxy = ["setpriv", "--reuid=nobody", f"--regid={SERVICE_ACCOUNT}", "--clear-groups"]
    as_gateway = [
        "setpriv",
        f"--reuid={SERVICE_ACCOUNT}",
        f"--regid={SERVICE_ACCOUNT}",
        "--clear-groups",
    ]
    assert run([*as_gateway, "ls", through_root]).returncode == 0
    for path in (through_root, str(gw.workdir / "state")):
        out = run([*as_proxy, "ls", path])
        assert out.returncode != 0 and "Permission denied" in out.stderr, (path, out)
    assert run([*as_proxy, "kill", "-0", str(gw.proc.pid)]).returncode != 0
