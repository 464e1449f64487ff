"""Job environment checks: the probe run as the user, and the message the user sees."""

import sys

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
