"""Job environment checks: the probe run as the user, and the message the user sees."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc

from slurm_gateway.envcheck import env_problem, probe

GOOD = {
    "python": "3.11.2",
    "dask": "2026.8.0",
    "distributed": "2026.8.0",
    "dask-gateway": "2026.3.0",
}


def test_usable_environment_has_no_problem():
    assert env_problem("/env", GOOD, "2026.3.0") is None
    assert env_problem("/env", {**GOOD, "dask-gateway": "2026.3.1"}, "2026.3.0") is None


def test_each_problem_names_the_prefix_and_the_fix():
    cases = [
        ({"error": "missing"}, "does not exist"),
        ({"error": "unreadable"}, "chmod -R u+rX /env"),
        ({"error": "no-python"}, "has no bin/python"),
        ({**GOOD, "dask-gateway": None}, "lacks dask-gateway"),
        ({**GOOD, "dask-gateway": "2024.1.0"}, "install dask-gateway==2026.3.*"),
        ({**GOOD, "distributed": "2025.1.0"}, "matching versions"),
    ]
    for report, fix in cases:
        problem = env_problem("/env", report, "2026.3.0")
        assert problem and "/env" in problem and fix in problem, (report, problem)


def test_probe_reads_versions_with_the_environments_own_python(tmp_path):
    prefix = tmp_path / "env"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python").symlink_to(sys.executable)
    found = probe(str(prefix))
    assert found["python"] == sys.version.split()[0]
    assert set(found) == {"python", "dask", "distributed", "dask-gateway"}


def test_probe_tells_missing_from_not_a_python_env(tmp_path):
    assert probe(str(tmp_path / "nope")) == {"error": "missing"}
    assert probe(str(tmp_path)) == {"error": "no-python"}


def test_a_timeout_names_the_limit_and_the_fix():
    report = {"error": "timeout", "detail": "did not answer within 30 s"}
    assert env_problem("/env", report, "2026.3.0") == (
        "conda_env /env: its python did not answer within 30 s; "
        "check that /env/bin/python starts (a slow or hung activation?)"
    )


def fake_env(tmp_path, script):
    """A prefix whose bin/python is the shell ``script``."""
    python = tmp_path / "env" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n" + script)
    python.chmod(0o755)
    return str(tmp_path / "env")


def is_gone(pid):
    """Whether ``pid`` has ended (a zombie waiting for init to reap it counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as status:
        return status.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_a_hung_python_and_all_it_started_are_killed_at_the_timeout(tmp_path):
    pids = tmp_path / "pids"
    prefix = fake_env(tmp_path, f"sleep 300 &\necho $$ $! > {pids}\nexec sleep 300\n")
    started = time.monotonic()
    assert probe(prefix, timeout=2) == {"error": "timeout", "detail": "did not answer within 2 s"}
    assert time.monotonic() - started < 3
    leader, background = map(int, pids.read_text().split())
    try:
        deadline = time.monotonic() + 5
        while not (is_gone(leader) and is_gone(background)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert is_gone(leader) and is_gone(background)
    finally:  # if not, do not leave them behind
        for pid in (leader, background):
            if not is_gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_python_that_prints_too_much_is_stopped_fast_in_bounded_memory(tmp_path):
    for script in ("exec head -c 10000000 /dev/zero\n", "exec yes\n", "exec yes >&2\n"):
        prefix = fake_env(tmp_path, script)
        tracemalloc.start()
        started = time.monotonic()
        report = probe(prefix, timeout=20)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert report == {"error": "python-broken", "detail": "printed more than 65536 bytes"}
        assert elapsed < 2 and peak < 1_000_000, (script, elapsed, peak)
        shutil.rmtree(tmp_path / "env")


def test_a_python_that_prints_no_report_or_fails_is_broken(tmp_path):
    prefix = fake_env(tmp_path, "echo hello\n")
    assert probe(prefix) == {"error": "python-broken", "detail": "printed no report: 'hello'"}
    shutil.rmtree(tmp_path / "env")
    prefix = fake_env(tmp_path, "echo oops >&2\nexit 3\n")
    assert probe(prefix) == {"error": "python-broken", "detail": "oops"}


def test_the_user_helper_prints_the_probe_as_one_json_line(tmp_path):
    helper = [sys.executable, "-m", "slurm_gateway.user_helper", "env-check"]
    prefix = fake_env(tmp_path, "sleep 300\n")
    out = subprocess.run([*helper, prefix, "--timeout", "1"], capture_output=True, text=True)
    assert out.returncode == 0
    assert json.loads(out.stdout) == {"error": "timeout", "detail": "did not answer within 1 s"}
    for bad in ("env", f"{tmp_path}/../env"):
        assert subprocess.run([*helper, bad], capture_output=True).returncode == 2
