"""`slurm-gateway check`'s decisions (preflight_rules.py): what an admin is told to fix."""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from slurm_gateway.preflight import helper_lines, sudo_width
from slurm_gateway.preflight_rules import (
    FAIL,
    PASS,
    SKIP,
    Outcome,
    array_size_outcome,
    check_job_script,
    documented_commands,
    exit_code,
    job_outcomes,
    job_report,
    log_root,
    log_root_problem,
    sudo_entries,
    sudo_rule_problems,
)
from slurm_gateway.transport import CommandResult

REPO = Path(__file__).resolve().parents[2]
HELPER = "/opt/slurm-gateway/venv/bin/slurm-gateway-user-helper"
DOCUMENTED = documented_commands("/usr/bin/sbatch", "/usr/bin/scancel", HELPER)

# `sudo -l -U slurmgw` on the dev cluster, wrapped by sudo as it prints it.
LISTING = """Matching Defaults entries for slurmgw on vm:
    env_reset, mail_badpass,
    secure_path=/usr/local/sbin\\:/usr/local/bin\\:/usr/sbin\\:/usr/bin\\:/sbin\\:/bin,
    use_pty, !requiretty

User slurmgw may run the following commands on vm:
    (%dask-users, !root) NOPASSWD: /usr/bin/sbatch --parsable, /usr/bin/scancel
        ^--( [0-9]+(_[0-9]+)?)+$, /usr/bin/scancel ^--full --signal=TERM --(
        [0-9]+(_[0-9]+)?)+$,
        /opt/slurm-gateway/venv/bin/slurm-gateway-user-helper
"""


def test_the_documented_commands_are_those_of_deploy_sudoers():
    rule = [
        line
        for line in (REPO / "deploy" / "sudoers").read_text().splitlines()
        if line.startswith("slurmgw ALL")
    ][0]
    commands = set(re.split(r", (?=/)", rule.partition(" NOPASSWD: ")[2]))
    assert commands == DOCUMENTED


def test_the_dev_clusters_rule_as_sudo_prints_it_is_exactly_the_documented_one():
    [(runas, commands)] = sudo_entries(LISTING)
    assert runas == "%dask-users, !root"
    assert set(commands) == DOCUMENTED
    assert sudo_rule_problems(LISTING, DOCUMENTED) == []


def test_a_wider_rule_is_named():
    wide = LISTING + "    (ALL) NOPASSWD: ALL\n    (root) /usr/bin/systemctl restart x\n"
    problems = sudo_rule_problems(wide, DOCUMENTED)
    assert "it may run commands as (ALL), not only as users" in problems
    assert "it may run 'ALL', which is not in the documented rule" in problems
    assert "it may run commands as (root), not only as users" in problems
    assert any("systemctl" in p for p in problems)


def test_users_without_not_root_are_too_wide():
    listing = LISTING.replace("(%dask-users, !root)", "(%dask-users)")
    assert sudo_rule_problems(listing, DOCUMENTED) == [
        "it may run commands as (%dask-users), not only as users"
    ]


def test_no_rule_at_all():
    listing = "User slurmgw is not allowed to run sudo on vm.\n"
    assert sudo_rule_problems(listing, DOCUMENTED) == [
        "the service account may run nothing through sudo"
    ]


def test_the_log_root_is_above_the_users_part():
    assert log_root("/var/log/slurm-gateway/{username}") == ("/var/log/slurm-gateway", True)
    assert log_root("/home/{username}/dask-logs") == ("/home", False)
    assert log_root("/scratch/logs/{username}/") == ("/scratch/logs", True)


@pytest.mark.parametrize(
    ("mode", "uid", "expected"),
    [
        (0o1733, 0, None),
        (0o0777, 0, "mode 0777: users could rename"),
        (0o1777, 0, "mode 1777, not 1733"),
        (0o0755, 0, "mode 0755, not 1733"),
        (0o1733, 1001, "owned by uid 1001"),
    ],
)
def test_log_root_permissions(mode, uid, expected):
    problem = log_root_problem("/var/log/sg", stat.S_IFDIR | mode, uid, users_create=True)
    if expected is None:
        assert problem is None
    else:
        assert expected in problem and "chmod 1733 /var/log/sg" in problem


def test_a_root_of_home_directories_needs_no_1733():
    assert log_root_problem("/home", stat.S_IFDIR | 0o755, 0, users_create=False) is None
    assert "no sticky bit" in log_root_problem("/home", stat.S_IFDIR | 0o777, 0, False)


def test_max_array_size():
    assert array_size_outcome(1001, True, 1000) == Outcome(
        "MaxArraySize", PASS, "arrays of at most 1000 workers (MaxArraySize=1001)"
    )
    capped = array_size_outcome(101, True, 1000)
    assert capped.status == PASS and "at most 100 workers" in capped.message
    assert "capped by SLURM" in capped.message
    refused = array_size_outcome(0, True, 1000)
    assert refused.status == FAIL and "use_job_arrays = False" in refused.message
    assert array_size_outcome(0, False, 1000).status == PASS
    assert array_size_outcome(None, True, 1000).status == FAIL


def _config(**changes):
    values = {
        "scheduler_partition": "schedulers",
        "partition": "workers",
        "scheduler_cores": 1,
        "scheduler_memory": 2**30,
        "account": "",
        "qos": "normal",
        "reservation": "",
        "extra_directives": ["--mail-type=NONE"],
        "scheduler_extra_directives": [],
    }
    return SimpleNamespace(**{**values, **changes})


def test_the_check_job_script_is_valid_bash_with_its_directives():
    script = check_job_script(_config(), "/var/log/sg/alice/c/check.log", "/env's", ("h", 8000))
    assert "#SBATCH --partition=schedulers" in script
    assert "#SBATCH --qos=normal" in script and "--account" not in script
    assert "#SBATCH --mail-type=NONE" in script
    assert "#SBATCH --mem=1024M" in script
    assert "#SBATCH --output=/var/log/sg/alice/c/check.log" in script
    assert "exec '/env'\"'\"'s'/bin/python -I - h 8000 dask distributed dask-gateway" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_a_directive_with_a_newline_is_refused():
    with pytest.raises(ValueError):
        check_job_script(_config(qos="x\n#SBATCH --uid=0"), "/l", "/e", ("h", 1))


def _report(**changes):
    report = {"host": "n1", "python": "3.11.2", "dask": "2026.8.0", "distributed": "2026.8.0"}
    return {**report, "dask-gateway": "2026.3.0", **changes}


def test_a_good_report_passes_both():
    lines = ["slurm-gateway-check: " + __import__("json").dumps(_report())]
    env, proxy = job_outcomes(job_report(lines), lines, "/env", "2026.3.0", "h:8000")
    assert env.status == PASS and "on n1" in env.message and "dask 2026.8.0" in env.message
    assert proxy == Outcome("proxy from a node", PASS, "on n1: h:8000 takes connections")


def test_a_missing_package_and_a_closed_proxy_are_named():
    report = _report(distributed=None, proxy_error="ConnectionRefusedError(111)")
    env, proxy = job_outcomes(report, [], "/env", "2026.3.0", "h:8000")
    assert env.status == FAIL and "lacks distributed" in env.message
    assert proxy.status == FAIL and "h:8000" in proxy.message and "Refused" in proxy.message


def test_an_import_error_fails_the_environment():
    env, _ = job_outcomes(_report(import_error="ImportError('x')"), [], "/e", "2026.3.0", "h:1")
    assert env.status == FAIL and "import dask fails" in env.message


def test_no_report_quotes_the_jobs_output():
    lines = ["/bin/bash: line 12: /env/bin/python: No such file or directory"]
    env, proxy = job_outcomes(job_report(lines), lines, "/env", "2026.3.0", "h:1")
    assert env.status == FAIL and "No such file" in env.message
    assert proxy.status == SKIP


def test_exit_code_and_helper_answers():
    assert exit_code([Outcome("a", PASS, ""), Outcome("b", SKIP, "")]) == 0
    assert exit_code([Outcome("a", PASS, ""), Outcome("b", FAIL, "")]) == 1
    assert helper_lines('{"lines": ["a", "b"]}\n') == ["a", "b"]
    assert helper_lines('{"error": "no such file"}') == []
    assert helper_lines("") == []


def test_what_the_check_job_printed_reaches_roots_terminal_without_escapes():
    # The test user writes the check job's log: a message quoting it is shown as text.
    line = Outcome("check job", FAIL, "job said: \x1b]0;owned\x07\x1b[2J\x9b31m done").line()
    assert not any(ord(char) < 32 or 0x7F <= ord(char) < 0xA0 for char in line)
    assert line.startswith("FAIL  check job: job said: ") and line.endswith(" done")


class _LoginNode:
    """A command runner (e.g. SSH's) whose sudo -l prints ``listing``; records what it ran."""

    sudo = "/usr/bin/sudo"

    def __init__(self, listing: str, returncode: int = 0):
        self.listing, self.returncode = listing, returncode
        self.ran: list[tuple[list[str], str | None]] = []

    async def run(self, argv, *, user=None, stdin=None):
        self.ran.append((list(argv), user))
        return CommandResult(list(argv), self.returncode, self.listing, "")


def test_the_sudo_rule_checked_is_where_the_runner_runs_commands_as_the_account():
    backend = SimpleNamespace(sbatch="/usr/bin/sbatch", scancel="/usr/bin/scancel")
    backend.user_helper = HELPER
    login_node = _LoginNode(LISTING)
    outcome = asyncio.run(sudo_width("slurmgw", backend, login_node))
    assert login_node.ran == [(["/usr/bin/sudo", "-n", "-l"], None)]  # as the account, there
    assert outcome.status == PASS, outcome
    wide = _LoginNode(LISTING + "    (ALL) NOPASSWD: ALL\n")
    assert asyncio.run(sudo_width("slurmgw", backend, wide)).status == FAIL
    refused = _LoginNode("", returncode=1)
    outcome = asyncio.run(sudo_width("slurmgw", backend, refused))
    assert outcome.status == FAIL and "sudo -l for slurmgw fails" in outcome.message


@pytest.mark.skipif(os.getuid() != 0, reason="dropping to another account needs root")
def test_root_drops_to_the_account_with_its_home():
    # What reads ~ after the drop (the SSH transport's default keys) reads the account's.
    code = "import os; from slurm_gateway.preflight import become; become('nobody'); "
    code += "print(os.getuid(), os.environ['HOME'], os.environ['USER'])"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "HOME": "/root", "PYTHONPATH": str(REPO)},
    )
    nobody = pwd.getpwnam("nobody")
    assert out.stdout.split() == [str(nobody.pw_uid), nobody.pw_dir, "nobody"], out.stderr
