"""Job specs: walltimes, worker lifetimes and commands, environments, #SBATCH values, and
the scripts rendered from them with the built-in templates."""

import itertools
import subprocess
from types import SimpleNamespace

import pytest

from slurm_gateway import jobspec
from slurm_gateway.cluster_config import SlurmClusterConfig
from slurm_gateway.jobspec import (
    GATEWAY_PRELOAD,
    PRELOAD_FILE,
    PRELOAD_WRITE,
    JobScripts,
    job_directives,
    split_environment,
    template_context,
    with_first_heartbeat,
    worker_command,
    worker_lifetimes,
    worker_seconds,
)
from slurm_gateway.rendering import template_environment

NOW = 1_800_000_000.0
HOUR = 3600.0
MARKER = "slurm-gateway:site1"


@pytest.mark.parametrize(
    ("walltime", "worker_walltime", "age", "expected"),
    [
        ("1-00:00:00", "", 23.5 * HOUR, 1800),  # the cluster's, cut to what is left
        ("1-00:00:00", "", 0, 86400),
        ("1-00:00:00", "02:00:00", 0, 7200),  # the worker's own, shorter
        ("1-00:00:00", "02:00:00", 23 * HOUR, 3600),  # own, but cut to the cluster's life
        ("04:00:00", "1-00:00:00", 0, 4 * HOUR),  # never beyond the cluster's
        ("90", "", 0, 5400),  # plain minutes
        ("1-00:00:00", "", 24 * HOUR - 10, 60),  # never under a minute
        ("1-00:00:00", "", 30 * HOUR, 60),  # even past the cluster's end
    ],
)
def test_worker_seconds(walltime, worker_walltime, age, expected):
    assert worker_seconds(walltime, worker_walltime, NOW - age, NOW) == expected


def _leave_times(lifetimes: list[str]) -> list[float]:
    return sorted(float(lifetime.rstrip("s")) for lifetime in lifetimes)


@pytest.mark.parametrize("seconds", [120, 600, 3600, 86400])
@pytest.mark.parametrize("margin", [30, 300])
@pytest.mark.parametrize("count", [2, 7, 25])
@pytest.mark.parametrize("first", [1, 17, 1000])
def test_workers_created_together_leave_one_after_the_other_before_the_walltime(
    seconds, margin, count, first
):
    leave = _leave_times(worker_lifetimes(seconds, margin, range(first, first + count)))
    margin = min(margin, seconds / 4)
    assert leave[-1] <= seconds - margin + 0.05, "a late leaver would meet SLURM's walltime"
    assert leave[0] >= seconds - 2 * margin - 0.05
    gaps = [later - earlier for earlier, later in itertools.pairwise(leave)]
    assert min(gaps) >= 0.3 * margin / count, "two of them leave together"
    assert max(gaps) <= 3 * margin / count, "not spread over the span"


def test_two_workers_leave_far_apart_however_they_were_submitted():
    # With dask's random stagger they could leave seconds apart: the second had no worker
    # to hand the first one's results to, and dask recomputed them. Single jobs submitted
    # one after another (no arrays, or held workers going out) are spread the same way.
    assert worker_lifetimes(3600, 300, [1, 2]) == ["3114.6s", "3229.2s"]
    one_by_one = worker_lifetimes(3600, 300, [1]) + worker_lifetimes(3600, 300, [2])
    assert one_by_one == ["3114.6s", "3229.2s"]


def test_lifetime_margin_is_at_most_a_quarter_of_the_walltime():
    leave = _leave_times(worker_lifetimes(1200, 1000, range(50)))
    assert 600 <= leave[0] and leave[-1] <= 900


def _worker_command(**kwargs):
    return worker_command(
        ["python", "-m", "distributed.cli.dask_worker"],
        "tls://10.1.2.3:8786",
        host="10.1.2.3",
        nthreads="2",
        memory_limit="4 GiB",
        **kwargs,
    )


def test_worker_command_reaches_the_scheduler_and_exits_without_it():
    command = _worker_command()
    assert command[:4] == ["python", "-m", "distributed.cli.dask_worker", "tls://10.1.2.3:8786"]
    assert command[command.index("--death-timeout") + 1] == str(jobspec.WORKER_DEATH_TIMEOUT)
    assert command[command.index("--nthreads") + 1] == "2"
    assert command[command.index("--memory-limit") + 1] == "4 GiB"
    assert command[command.index("--dashboard-address") + 1] == "10.1.2.3:0"
    assert "--host" not in command and "--name" not in command
    assert "--lifetime" not in command  # one per array task, in the script


def test_worker_command_listens_on_listen_host_only_when_set():
    assert _worker_command(listen_host="0.0.0.0")[-2:] == ["--host", "0.0.0.0"]


def test_split_environment_gateway_wins():
    gateway = {"DASK_GATEWAY_API_TOKEN": "secret", "SHARED": "same", "GW": "1"}
    user = {"DASK_GATEWAY_API_TOKEN": "forged", "SHARED": "same", "MINE": "x"}
    gateway_only, user_only = split_environment(gateway, user)
    assert gateway_only == {"DASK_GATEWAY_API_TOKEN": "secret", "GW": "1"}
    assert user_only == {"SHARED": "same", "MINE": "x"}


def _config(**overrides):
    config = SlurmClusterConfig().to_dict()
    config.update(overrides)
    return config


def _directives(config, role, tasks=1):
    return job_directives(
        config, role, name="n", marker=MARKER, log_directory="/logs", tasks=tasks, walltime="1:00"
    )


@pytest.mark.parametrize(
    ("scheduler_partition", "expected"), [("", "workers"), ("service", "service")]
)
def test_scheduler_partition_falls_back_to_partition(scheduler_partition, expected):
    config = _config(partition="workers", scheduler_partition=scheduler_partition)
    assert _directives(config, "scheduler")["partition"] == expected
    assert _directives(config, "worker")["partition"] == "workers"


def test_constraint_and_gres_only_for_workers():
    config = _config(constraint="skylake", gres="gpu:1", account="proj", qos="low")
    worker, scheduler = _directives(config, "worker"), _directives(config, "scheduler")
    assert (worker["constraint"], worker["gres"]) == ("skylake", "gpu:1")
    assert (scheduler["constraint"], scheduler["gres"]) == ("", "")
    assert worker["account"] == scheduler["account"] == "proj"
    assert worker["qos"] == scheduler["qos"] == "low"


def test_cores_and_memory_in_mib_rounded_up():
    config = _config(worker_cores=4, worker_memory=2**30 + 1, scheduler_memory=2**30)
    worker, scheduler = _directives(config, "worker"), _directives(config, "scheduler")
    assert (worker["cpus"], worker["memory"]) == (4, "1025M")
    assert (scheduler["cpus"], scheduler["memory"]) == (1, "1024M")


@pytest.mark.parametrize(("tasks", "array"), [(0, ""), (1, ""), (2, "0-1"), (3, "0-2")])
def test_array_only_for_more_than_one_task(tasks, array):
    assert _directives(_config(), "worker", tasks)["array"] == array


def test_extra_directives_are_the_common_ones_then_the_roles():
    config = _config(
        extra_directives=["--exclusive"],
        scheduler_extra_directives=["--nice=10"],
        worker_extra_directives=["--mail-type=NONE"],
    )
    assert _directives(config, "worker")["extra_directives"] == ["--exclusive", "--mail-type=NONE"]
    assert _directives(config, "scheduler")["extra_directives"] == ["--exclusive", "--nice=10"]
    assert config["extra_directives"] == ["--exclusive"]  # the config itself is left as it was


def test_template_context_is_the_declared_contract():
    config = _config(environment={"MINE": "x"}, log_directory="/logs/{username}/")
    context = template_context(
        config,
        "worker",
        cluster_name="c0ffee",
        username="alice",
        job={"name": "n"},
        command=["dask-worker"],
        gateway_environment={"GW": "1"},
        tls=("CERT", "KEY"),
        worker_names=("w1", "w2"),
    )
    assert set(context) == {
        "role",
        "cluster_name",
        "job",
        "conda_env",
        "user_environment",
        "gateway_environment",
        "tls_cert",
        "tls_key",
        "command",
        "worker_names",
        "worker_lifetimes",
        "user_log_directory",
        "log_retention_days",
        "scheduler_preload",
    }
    assert context["scheduler_preload"] == ""  # a worker's
    assert context["user_log_directory"] == "/logs/alice"
    assert (context["tls_cert"], context["tls_key"]) == ("CERT", "KEY")
    assert context["worker_names"] == ["w1", "w2"]
    assert context["user_environment"] == {"MINE": "x"}
    assert context["gateway_environment"] == {"GW": "1"}


def _cluster(**config):
    return SimpleNamespace(
        name="c0ffee",
        username="alice",
        config=_config(environment={"DASK_GATEWAY_API_TOKEN": "forged", "MINE": "x"}, **config),
        start_time=(NOW - 23.5 * HOUR) * 1000,  # milliseconds, as dask-gateway-server keeps it
        scheduler_address="tls://10.1.2.3:8786",
        tls_cert=b"-----CERT-----",
        tls_key=b"-----KEY-----",
    )


SCRIPTS = JobScripts(template_environment([""]), "dask-gateway", MARKER, "10.1.2.3", "", 300)
GATEWAY_ENV = {"DASK_GATEWAY_API_TOKEN": "secret", "MINE": "x"}


def _worker_script(cluster, count=3):
    workers = [SimpleNamespace(name=f"w{i}", id=i + 1) for i in range(count)]
    return SCRIPTS.workers(cluster, "/logs/alice/c1", workers, ("2", "4 GiB"), GATEWAY_ENV, NOW)


def _bash_syntax_ok(script):
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_worker_array_script():
    script = _worker_script(_cluster(partition="workers", constraint="skylake"))
    lines = script.splitlines()
    assert "#SBATCH --array=0-2" in lines
    assert "#SBATCH --time=0-00:30:00" in lines  # what is left of the cluster's day
    assert "#SBATCH --job-name=dask-gateway-worker" in lines
    assert f"#SBATCH --comment={MARKER}" in lines
    assert "#SBATCH --partition=workers" in lines
    assert "#SBATCH --constraint=skylake" in lines
    assert "worker_names=( w0 w1 w2 )" in lines
    # 30 min left, margin 300 s: between 1200 and 1500 s, spread (workers 1, 2, 3)
    assert "worker_lifetimes=( 1314.6s 1429.2s 1243.8s )" in lines
    assert "tls://10.1.2.3:8786" in script
    _bash_syntax_ok(script)


def test_a_worker_template_without_worker_lifetimes_gets_a_staggered_lifetime(tmp_path):
    # An admin's template written before worker_lifetimes: its workers must not run to the
    # walltime (SLURM kills them with their data).
    (tmp_path / "worker.sh.j2").write_text(
        '{% extends "base.sh.j2" %}\n{% block command %}\n'
        "worker_names=({% for name in worker_names %} {{ name }}{% endfor %} )\n"
        '{{ command | command }} --name "${worker_names[${SLURM_ARRAY_TASK_ID:-0}]}"\n'
        "{% endblock %}\n"
    )
    scripts = JobScripts(template_environment([tmp_path]), "dask-gateway", MARKER, "h", "", 300)
    workers = [SimpleNamespace(name="w0", id=1), SimpleNamespace(name="w1", id=2)]
    script = scripts.workers(_cluster(), "/logs/alice/c1", workers, ("1", "1 GiB"), {}, NOW)
    assert "--lifetime 1350s --lifetime-stagger 150s" in script  # 30 min left
    _bash_syntax_ok(script)
    # Whatever the script holds otherwise: a user's value that reads "--lifetime" too.
    cluster = _cluster()
    cluster.config["environment"]["X"] = "--lifetime"
    script = scripts.workers(cluster, "/logs/alice/c1", workers, ("1", "1 GiB"), {}, NOW)
    assert "--lifetime 1350s --lifetime-stagger 150s" in script


def test_user_variable_never_overrides_a_gateway_one():
    script = _worker_script(_cluster())
    assert "forged" not in script
    assert script.count("export DASK_GATEWAY_API_TOKEN=secret") == 1
    assert script.count("export MINE=x") == 1
    # The gateway's variables are exported after the environment's activation.
    assert script.index("export DASK_GATEWAY_API_TOKEN=") > script.index("DASK_GATEWAY_ENV=")


def test_single_worker_is_not_an_array():
    script = _worker_script(_cluster(), count=1)
    assert "--array" not in script
    assert "worker_names=( w0 )" in script.splitlines()


def test_scheduler_script():
    cluster = _cluster(partition="workers", constraint="skylake", gres="gpu:1")
    command = ["python", "-m", "distributed.cli.dask_scheduler"]
    script = SCRIPTS.scheduler(cluster, "/logs/alice/c1", command, GATEWAY_ENV)
    lines = script.splitlines()
    assert "#SBATCH --time=1-00:00:00" in lines  # the cluster's whole walltime
    assert "#SBATCH --job-name=dask-gateway-scheduler" in lines
    assert f"#SBATCH --comment={MARKER}" in lines
    assert "#SBATCH --partition=workers" in lines
    assert "--array" not in script and "--constraint" not in script and "--gres" not in script
    assert "python -m distributed.cli.dask_scheduler" in lines
    assert "forged" not in script
    _bash_syntax_ok(script)


def test_our_preload_is_imported_right_before_dask_gateways():
    base = ["dask-scheduler", "--preload", GATEWAY_PRELOAD, "--dg-api-address", ":0"]
    assert with_first_heartbeat(base) == [
        "dask-scheduler",
        "--preload",
        PRELOAD_FILE,
        "--preload",
        GATEWAY_PRELOAD,
        "--dg-api-address",
        ":0",
    ]
    assert with_first_heartbeat(["my-scheduler", "--preload"]) == ["my-scheduler", "--preload"]


def test_the_scheduler_script_writes_the_preload_it_loads():
    cluster = _cluster()
    command = ["python", "-m", "distributed.cli.dask_scheduler", "--preload", GATEWAY_PRELOAD]
    script = SCRIPTS.scheduler(cluster, "/logs/alice/c1", command, GATEWAY_ENV)
    assert f"--preload {PRELOAD_FILE}" in script
    assert PRELOAD_WRITE in script
    assert "def dask_setup(scheduler)" in script
    assert "slurm_gateway_preload" not in _worker_script(_cluster(), count=1)
    _bash_syntax_ok(script)


def test_an_admin_base_template_without_the_preload_gets_no_preload(tmp_path):
    (tmp_path / "base.sh.j2").write_text("#!/bin/bash\n{% block command %}{% endblock %}\n")
    scripts = JobScripts(template_environment([str(tmp_path)]), "dg", MARKER, "h", "", 300)
    command = ["dask-scheduler", "--preload", GATEWAY_PRELOAD]
    script = scripts.scheduler(_cluster(), "/logs/alice/c1", command, GATEWAY_ENV)
    assert "dask-scheduler --preload dask_gateway.scheduler_preload" in script
    assert PRELOAD_FILE not in script
