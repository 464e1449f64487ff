"""deploy/sudoers: the one copy of the service account's sudo rule.

scripts/dev-cluster.sh installs it verbatim as /etc/sudoers.d/slurm-gateway and the README
shows its rule lines to admins; both must be the same text, and sudo must accept it.
"""

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUDOERS = REPO / "deploy" / "sudoers"
README = REPO / "README.md"


def _rule_lines() -> list[str]:
    lines = [line.rstrip() for line in SUDOERS.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _fenced_blocks(text: str) -> list[list[str]]:
    """The lines of each fenced code block of a Markdown text."""
    return [
        [line.rstrip() for line in block.splitlines() if line.strip()]
        for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    ]


def test_the_rule_is_the_service_account_never_root():
    rules = _rule_lines()
    assert rules[0] == "Defaults:slurmgw !requiretty"
    assert len(rules) == 2, rules
    who, _, commands = rules[1].partition(" NOPASSWD: ")
    assert who == "slurmgw ALL = (%dask-users, !root)"
    # Absolute paths only, each program named once per argument pattern.
    for command in re.split(r", (?=/)", commands):
        assert command.startswith("/"), command
    assert "ALL" not in commands


def test_readme_shows_exactly_the_rule_lines():
    rules = _rule_lines()
    blocks = [block for block in _fenced_blocks(README.read_text()) if rules[0] in block]
    assert blocks, f"README.md shows no code block with {rules[0]!r}; it should show:\n" + (
        "\n".join(rules)
    )
    for block in blocks:
        assert block == rules, (
            "README.md's sudo rule differs from deploy/sudoers; it should show exactly:\n"
            + "\n".join(rules)
        )


def test_no_other_copy_of_the_rule_in_the_scripts():
    for path in (REPO / "scripts").rglob("*"):
        if path.is_file():
            assert "NOPASSWD" not in path.read_text(errors="replace"), path


def test_visudo_accepts_it():
    visudo = shutil.which("visudo") or shutil.which("visudo", path="/usr/sbin:/sbin")
    if visudo is None:
        pytest.skip("visudo is not installed (package sudo)")
    out = subprocess.run([visudo, "-cf", str(SUDOERS)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


def test_file_is_plain_and_not_writable_by_others():
    info = os.lstat(SUDOERS)
    assert stat.S_ISREG(info.st_mode), "deploy/sudoers must be a regular file, not a link"
    assert not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH), oct(info.st_mode)
    text = SUDOERS.read_bytes()
    assert text.endswith(b"\n") and b"\r" not in text  # sudo needs the final newline
