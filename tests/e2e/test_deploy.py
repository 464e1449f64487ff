"""The shipped sudo rule is the one the dev cluster runs with: scripts/test.sh ran
scripts/dev-cluster.sh up from this repository, which installs deploy/sudoers verbatim."""

from __future__ import annotations

import os
import stat
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_installed_sudo_rule_is_deploy_sudoers():
    installed = Path("/etc/sudoers.d/slurm-gateway")
    assert installed.read_bytes() == (REPO / "deploy" / "sudoers").read_bytes()
    info = os.lstat(installed)
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o440
    assert (info.st_uid, info.st_gid) == (0, 0)
