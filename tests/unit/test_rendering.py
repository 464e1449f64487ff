"""Job scripts: every value quoted, hostile values inert, directives one line each."""

import json
import os
import subprocess
import sys
import time

import pytest

from slurm_gateway.rendering import render_job_script, template_environment

HOSTILE = [
    "/x; touch {marker}",
    "$(touch {marker})",
    "`touch {marker}`",
    "a'b\"c; touch {marker}",
    "line1\ntouch {marker}\n",
    "${{IFS}}touch${{IFS}}{marker}",
    "\\'; touch {marker}; '",
]


def _context(tmp_path, environment, conda_env, **job):
    return {
        "role": "worker",
        "cluster_name": "c0ffee",
        "job": {
            "name": "dask-gateway-worker",
            "comment": "dask-gateway:c0ffee:w1",
            "log_directory": str(tmp_path / "logs" / "c0ffee"),
            "cpus": 1,
            "memory": "1024M",
            "walltime": "1-00:00:00",
            "partition": "workers",
            "account": "",
            "qos": "",
            "reservation": "",
            "constraint": "",
            "gres": "",
            "extra_directives": [],
            "array": "",
            **job,
        },
        "conda_env": conda_env,
        "user_environment": environment,
        "gateway_environment": {"DASK_GATEWAY_CLUSTER_NAME": "c0ffee"},
        "tls_cert": "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----",
        "tls_key": "-----BEGIN PRIVATE KEY-----\ndef\n-----END PRIVATE KEY-----",
        "command": ["python", "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
        "worker_names": ["w0"],
        "worker_lifetimes": ["100s"],
        "user_log_directory": str(tmp_path / "logs"),
        "log_retention_days": 0,
        "scheduler_preload": "",
    }


@pytest.fixture
def fake_env(tmp_path):
    """A venv-shaped prefix whose python is this interpreter."""
    prefix = tmp_path / "env"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python").symlink_to(sys.executable)
    return str(prefix)


def _run(script, tmp_path, **env):
    """Run a job script as slurmd would; its output is what it wrote into its log."""
    path = tmp_path / "job.sh"
    path.write_text(script)
    logs = tmp_path / "logs" / "c0ffee"
    logs.mkdir(parents=True, exist_ok=True)
    for log in logs.glob("*.log"):
        log.unlink()
    result = subprocess.run(
        ["bash", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "1", "TMPDIR": str(tmp_path), **env},
    )
    written = "".join(log.read_text() for log in sorted(logs.glob("*.log")))
    result.stdout += written
    result.stderr += written
    return result


def test_hostile_env_values_arrive_verbatim_and_run_nothing(tmp_path, fake_env):
    marker = tmp_path / "pwned"
    environment = {f"V{i}": v.format(marker=marker) for i, v in enumerate(HOSTILE)}
    script = render_job_script(
        template_environment(), "worker.sh.j2", _context(tmp_path, environment, fake_env)
    )
    result = _run(script, tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    for name, value in environment.items():
        assert seen[name] == value
    assert seen["VIRTUAL_ENV"] == fake_env
    assert seen["DASK_GATEWAY_CLUSTER_NAME"] == "c0ffee"
    assert not marker.exists()


def test_hostile_conda_env_path_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    for value in HOSTILE:
        script = render_job_script(
            template_environment(),
            "scheduler.sh.j2",
            _context(tmp_path, {}, value.format(marker=marker)),
        )
        result = _run(script, tmp_path)
        assert result.returncode == 71, (value, result.stderr)
        assert "has no bin/python" in result.stderr
        assert not marker.exists(), value


def test_tls_credentials_are_private_files_removed_at_exit(tmp_path, fake_env):
    context = _context(tmp_path, {}, fake_env)
    context["command"] = [
        "sh",
        "-c",
        'stat -c %a "$DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY"; '
        'cat "$DASK_DISTRIBUTED__COMM__TLS__CA_FILE"',
    ]
    result = _run(render_job_script(template_environment(), "worker.sh.j2", context), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "600" in result.stdout and "-----BEGIN CERTIFICATE-----\nabc\n" in result.stdout
    assert not list(tmp_path.glob("dask-gateway.*")), "credentials left on disk"


def test_conda_prefix_runs_activate_scripts(tmp_path, fake_env):
    os.mkdir(os.path.join(fake_env, "conda-meta"))
    activate_d = os.path.join(fake_env, "etc", "conda", "activate.d")
    os.makedirs(activate_d)
    with open(os.path.join(activate_d, "site.sh"), "w") as f:
        f.write("export FROM_ACTIVATE_D=yes\n")
    script = render_job_script(
        template_environment(), "worker.sh.j2", _context(tmp_path, {}, fake_env)
    )
    seen = json.loads(_run(script, tmp_path).stdout.strip().splitlines()[-1])
    assert seen["CONDA_PREFIX"] == fake_env
    assert seen["FROM_ACTIVATE_D"] == "yes"
    assert seen["PATH"].startswith(fake_env + "/bin:")


def test_directives_rendered_and_newlines_refused(tmp_path, fake_env):
    context = _context(
        tmp_path, {}, fake_env, qos="debug", gres="gpu:1", extra_directives=["--exclusive"]
    )
    script = render_job_script(template_environment(), "worker.sh.j2", context)
    assert "#SBATCH --qos=debug\n" in script
    assert "#SBATCH --gres=gpu:1\n" in script
    assert "#SBATCH --exclusive\n" in script
    assert "#SBATCH --account" not in script
    for value in ["workers\ntouch /tmp/x", "a\\' --uid=0", "a b", "'x'", "$(id)", "a#b"]:
        bad = _context(tmp_path, {}, fake_env, partition=value)
        with pytest.raises(ValueError, match="an #SBATCH value may hold only"):
            render_job_script(template_environment(), "worker.sh.j2", bad)


def test_admin_directives_sbatch_would_not_take_literally_are_refused_at_startup():
    from slurm_gateway.cluster_config import SlurmClusterConfig

    assert SlurmClusterConfig(constraint="a&b|c", gres="gpu:a100:1").constraint == "a&b|c"
    for trait, value in [
        ("extra_directives", ["--comment=a\\' --mem=1"]),
        ("qos", "normal --uid=0"),
        ("log_directory", "/var/log/gw/{username} x"),
    ]:
        with pytest.raises(Exception, match=f"{trait}: .*an #SBATCH value may hold only"):
            SlurmClusterConfig(**{trait: value})


def test_admin_template_directory_overrides_builtin(tmp_path, fake_env):
    admin = tmp_path / "admin"
    admin.mkdir()
    (admin / "worker.sh.j2").write_text(
        '{% extends "base.sh.j2" %}{% block command %}echo site-worker {{ cluster_name }}\n'
        "{% endblock %}"
    )
    script = render_job_script(
        template_environment([admin]), "worker.sh.j2", _context(tmp_path, {}, fake_env)
    )
    assert _run(script, tmp_path).stdout.strip().endswith("site-worker c0ffee")


def test_scheduler_removes_the_users_cluster_logs_past_retention(tmp_path, fake_env):
    logs = tmp_path / "logs"
    (logs / "old-cluster").mkdir(parents=True)
    (logs / "recent-cluster").mkdir()
    subprocess.run(["touch", "-d", "40 days ago", str(logs / "old-cluster")], check=True)
    context = _context(tmp_path, {}, fake_env)
    context["log_retention_days"] = 30
    result = _run(render_job_script(template_environment(), "scheduler.sh.j2", context), tmp_path)
    assert result.returncode == 0, result.stderr
    # The cleanup runs beside the scheduler (in the background): it may end after the script.
    deadline = time.monotonic() + 10
    while (logs / "old-cluster").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(p.name for p in logs.iterdir()) == ["c0ffee", "recent-cluster"]


def test_each_array_task_runs_the_worker_named_for_its_index(tmp_path, fake_env):
    context = _context(tmp_path, {}, fake_env, array="0-2")
    context["worker_names"] = ["w0", "w1", "w2"]
    context["worker_lifetimes"] = ["300s", "200s", "100s"]
    context["command"] = ["python", "-c", "import sys; print(sys.argv[1:])"]
    script = render_job_script(template_environment(), "worker.sh.j2", context)
    assert "#SBATCH --array=0-2\n" in script
    for index in range(3):
        result = _run(script, tmp_path, SLURM_ARRAY_TASK_ID=str(index))
        expected = ["--name", f"w{index}", "--lifetime", f"{3 - index}00s"]
        assert result.stdout.strip().splitlines()[-1] == str(expected)


def test_a_job_whose_log_directory_became_a_link_runs_nothing(tmp_path, fake_env):
    # Checked at submission, but the job may start hours later: by then someone may have
    # swapped the directory for a link to theirs.
    marker = tmp_path / "ran"
    context = _context(tmp_path, {}, fake_env)
    context["command"] = ["touch", str(marker)]
    script = render_job_script(template_environment(), "worker.sh.j2", context)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "c0ffee").symlink_to(theirs)
    path = tmp_path / "job.sh"
    path.write_text(script)
    result = subprocess.run(
        ["bash", str(path)], capture_output=True, text=True, timeout=30,
        env={"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "1", "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 72
    assert not marker.exists() and list(theirs.iterdir()) == []


def test_each_task_of_an_array_logs_to_its_own_file(tmp_path, fake_env):
    context = _context(tmp_path, {}, fake_env, array="0-1")
    context["worker_names"] = ["w0", "w1"]
    context["worker_lifetimes"] = ["100s", "50s"]
    script = render_job_script(template_environment(), "worker.sh.j2", context)
    _run(script, tmp_path, SLURM_ARRAY_JOB_ID="7", SLURM_ARRAY_TASK_ID="1")
    assert [p.name for p in (tmp_path / "logs" / "c0ffee").iterdir()] == ["worker-7_1.log"]
