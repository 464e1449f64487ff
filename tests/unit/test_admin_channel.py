"""The admin channel (slurm-gateway clusters, stop): its decisions, its table, and the
socket itself served by the backend's mixin to a real client in this process."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import subprocess
import sys
from types import SimpleNamespace

import pytest
from dask_gateway_server.backends.db_base import JobStatus
from dask_gateway_server.models import ClusterStatus

from slurm_gateway.admin import (
    MAX_REASON_CHARS,
    AdminChannel,
    cluster_summary,
    find_cluster,
    peer_allowed,
    reason_problem,
    socket_path,
    stop_message,
)
from slurm_gateway.admin_cli import (
    ask_gateway,
    cluster_table,
    format_age,
    format_jobs,
    format_memory,
    health_lines,
)

GiB = 1 << 30


@pytest.mark.parametrize(
    "reason", ["", "maintenance", "node n3 reboot at 14:00 — sorry", "x" * 200]
)
def test_reasons_an_admin_may_give(reason):
    assert reason_problem(reason) is None


@pytest.mark.parametrize(
    ("reason", "says"),
    [
        ("x" * (MAX_REASON_CHARS + 1), "at most 200"),
        ("two\nlines", "U+000A"),
        ("\x1b[2Jcleared screen", "U+001B"),
        ("tab\there", "U+0009"),
        ("right\u202eto left", "U+202E"),  # reverses what the terminal shows
        ("nul\x00", "U+0000"),
        (None, "text"),
    ],
)
def test_reasons_that_are_refused(reason, says):
    problem = reason_problem(reason)
    assert problem is not None and says in problem


def test_the_message_the_user_sees():
    assert stop_message("c0ffee", " maintenance ") == (
        "Cluster c0ffee was stopped by an administrator: maintenance"
    )
    assert stop_message("c0ffee", "") == "Cluster c0ffee was stopped by an administrator"


def test_only_root_and_the_service_account_are_served():
    assert peer_allowed(0, 999) and peer_allowed(999, 999)
    assert not peer_allowed(1001, 999) and not peer_allowed(65534, 999)


def _worker(job_id, target=JobStatus.RUNNING):
    return SimpleNamespace(state={"job_id": job_id} if job_id else {}, target=target)


def _cluster(name="c0ffee", user="alice", job="42", status=JobStatus.RUNNING, **more):
    target = more.pop("target", status)
    fields = {
        "name": name,
        "username": user,
        "status": status,
        "target": target,
        "model_status": {
            JobStatus.RUNNING: ClusterStatus.RUNNING,
            JobStatus.FAILED: ClusterStatus.FAILED,
        }.get(target, ClusterStatus.PENDING),
        "count": 2,
        "start_time": 1_000_000,  # ms
        "state": {"job_id": job, "log_directory": "/var/log/slurm-gateway/alice/x"},
        "config": {
            "worker_cores": 2,
            "worker_memory": 4 * GiB,
            "scheduler_cores": 1,
            "scheduler_memory": GiB,
        },
        "workers": {
            "w1": _worker("43_0"),
            "w2": _worker(""),
            "w3": _worker("41", JobStatus.STOPPED),
        },
    }
    fields.update(more)
    return SimpleNamespace(**fields)


def test_find_a_cluster_by_name_or_scheduler_job():
    a, b = _cluster("aaa", job="42"), _cluster("bbb", job="43")
    assert find_cluster([a, b], "bbb") is b
    assert find_cluster([a, b], "42") is a
    assert find_cluster([a, b], "44") is None
    assert find_cluster([_cluster("aaa", job=None)], "") is None
    # A name wins over another cluster's job id.
    assert find_cluster([_cluster("x", job="42"), _cluster("42", job="1")], "42").name == "42"


def test_a_summary_has_jobs_states_age_and_resources():
    states = {"42": "RUNNING", "43_0": "PENDING"}
    summary = cluster_summary(_cluster(), lambda j: states.get(j, ""), now=1000 + 3725)
    assert summary["user"] == "alice" and summary["status"] == "RUNNING"
    assert summary["age"] == 3725
    assert summary["scheduler"] == {"id": "42", "state": "RUNNING"}
    # The stopped worker is gone; the one being submitted has no job yet.
    assert summary["workers"] == [
        {"id": "43_0", "state": "PENDING"},
        {"id": "", "state": "SUBMITTING"},
    ]
    assert summary["cores"] == 1 + 2 * 2 and summary["memory"] == GiB + 2 * 4 * GiB
    assert "failure" not in summary


def test_a_failed_cluster_holds_nothing_and_shows_its_failure():
    cluster = _cluster(
        status=JobStatus.FAILED, workers={}, state={"job_id": "42", "failure": "stopped: x"}
    )
    summary = cluster_summary(cluster, lambda j: "", now=1000)
    assert summary["status"] == "FAILED" and summary["failure"] == "stopped: x"
    assert summary["cores"] == 0 and summary["memory"] == 0


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59, "59s"), (61, "1m"), (3725, "1h02m"), (90061, "1d01h")]
)
def test_ages(seconds, text):
    assert format_age(seconds) == text


def test_memory():
    assert format_memory(512 << 20) == "512M"
    assert format_memory(9 * GiB) == "9.0G"
    assert format_memory(3 << 39) == "1.5T"


def test_jobs_are_grouped_by_state_and_bounded():
    summary = {
        "scheduler": {"id": "42", "state": "RUNNING"},
        "workers": [{"id": f"43_{i}", "state": "RUNNING"} for i in range(10)]
        + [{"id": "44", "state": "PENDING"}],
    }
    assert format_jobs(summary, max_ids=3) == (
        "scheduler 42 RUNNING; workers PENDING 44, RUNNING 43_0 43_1 43_2 +7"
    )
    assert format_jobs({"scheduler": None, "workers": []}) == "-"


def test_the_table_aligns_columns_and_neutralizes_terminal_escapes():
    states = {"42": "RUNNING", "43_0": "RUNNING"}
    running = cluster_summary(_cluster(), lambda j: states.get(j, ""), now=1060)
    failed = cluster_summary(
        _cluster(
            "f00d",
            "bob",
            status=JobStatus.FAILED,
            workers={},
            state={"job_id": "50", "failure": "scheduler job 50 FAILED; last line: \x1b]0;pwn\x07"},
        ),
        lambda j: "",
        now=1060,
    )
    lines = cluster_table([running, failed]).splitlines()
    assert lines[0].split() == [
        "USER", "CLUSTER", "STATUS", "AGE", "WORKERS", "CORES", "MEMORY", "JOBS",
    ]  # fmt: skip
    assert lines[1].split()[:7] == ["alice", "c0ffee", "RUNNING", "1m", "2/2", "5", "9.0G"]
    assert "scheduler 42 RUNNING; workers RUNNING 43_0, SUBMITTING -" in lines[1]
    assert lines[2].split()[:3] == ["bob", "f00d", "FAILED"]
    assert lines[1].index("RUNNING") == lines[2].index("FAILED")  # aligned
    assert lines[3].strip().startswith("scheduler job 50 FAILED")
    assert "\x1b" not in lines[3] and "\x07" not in lines[3]
    assert cluster_table([]) == "No clusters."


class _Base:
    async def setup(self, app):
        pass

    async def cleanup(self):
        pass


class _Backend(AdminChannel, _Base):
    """The admin channel on a backend whose database holds two clusters."""

    def __init__(self, state_directory):
        self.state_directory = str(state_directory)
        self.log = logging.getLogger("test-admin")
        self.tracker = SimpleNamespace(get=lambda j: SimpleNamespace(state="RUNNING"))
        self.stopped = []
        self.health = SimpleNamespace(admin_report=self._admin_report)
        alice = _cluster("c0ffee", "alice", job="42")
        alice.shutdown = asyncio.get_running_loop().create_future()
        self.clusters = [alice, _cluster("f00d", "bob", job="50")]
        self.db = SimpleNamespace(
            list_clusters=lambda statuses=None: list(self.clusters),
            update_cluster=lambda cluster, state: setattr(cluster, "state", state),
        )

    async def _admin_report(self):
        check = {"status": "fail", "message": "slurmctld does not answer; see the gateway log"}
        return {"status": "fail", "checks": {"slurm": {**check, "detail": "ssh: x", "age": 2}}}

    async def stop_cluster(self, name, failed=False):
        cluster = next(c for c in self.clusters if c.name == name)
        cluster.target = JobStatus.FAILED if failed else JobStatus.STOPPED
        self.stopped.append(name)
        cluster.shutdown.set_result(None)


def test_the_channel_serves_clusters_and_stop_over_its_socket(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)

    async def scenario():
        backend = _Backend(state)
        await backend.setup(None)
        path = socket_path(state)
        mode = stat.S_IMODE(os.lstat(path).st_mode)

        def ask(request):
            return asyncio.to_thread(ask_gateway, path, request, 10)

        listing = await ask({"op": "clusters"})
        refused = await ask({"op": "stop", "cluster": "42", "reason": "evil\x1b[2J"})
        unknown = await ask({"op": "stop", "cluster": "nope", "reason": ""})
        stopped = await ask({"op": "stop", "cluster": "42", "reason": "maintenance"})
        again = await ask({"op": "stop", "cluster": "c0ffee", "reason": "twice"})
        bad = await ask({"op": "drop tables"})
        health = await ask({"op": "health"})
        await backend.cleanup()
        return backend, path, mode, listing, refused, unknown, stopped, again, bad, health

    backend, path, mode, listing, refused, unknown, stopped, again, bad, health = asyncio.run(
        scenario()
    )
    assert health["health"]["checks"]["slurm"]["detail"] == "ssh: x"
    assert mode == 0o600
    assert [(c["user"], c["name"], c["scheduler"]["id"]) for c in listing["clusters"]] == [
        ("alice", "c0ffee", "42"),
        ("bob", "f00d", "50"),
    ]
    assert "U+001B" in refused["error"]
    assert "no cluster is named nope" in unknown["error"]
    assert stopped == {
        "ok": True,
        "name": "c0ffee",
        "user": "alice",
        "stopped": True,
        "message": "Cluster c0ffee was stopped by an administrator: maintenance",
    }
    assert backend.stopped == ["c0ffee"]  # once: the second stop is refused
    assert backend.clusters[0].state["failure"] == stopped["message"]
    assert "already" in again["error"]
    assert bad == {"error": "unknown request"}
    assert not path.exists()  # removed at cleanup


def test_a_client_without_a_gateway_is_told_so(tmp_path):
    with pytest.raises(RuntimeError, match="the gateway is not running"):
        ask_gateway(tmp_path / "admin.sock", {"op": "clusters"}, 5)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-c", "from slurm_gateway.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_subcommands_say_what_is_wrong_without_a_gateway(tmp_path):
    out = _cli("clusters", f"--state-directory={tmp_path}")
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"slurm-gateway clusters: the gateway is not running (nothing answers at "
        f"{tmp_path}/admin.sock)"
    )
    # The reason is checked before the gateway is asked.
    out = _cli("stop", "42", "--reason=a\x1b[2Jb", f"--state-directory={tmp_path}")
    assert out.returncode == 1 and "U+001B" in out.stderr, out.stderr
    out = _cli("stop", f"--state-directory={tmp_path}")
    assert out.returncode == 1 and "usage: slurm-gateway stop" in out.stderr
    config = tmp_path / "config.py"
    config.write_text(f'c.SlurmBackend.state_directory = "{tmp_path / "state"}"\n')
    out = _cli("clusters", "-f", str(config))
    assert f"nothing answers at {tmp_path}/state/admin.sock" in out.stderr, out.stderr
    helped = _cli("--help")
    out = _cli("health", f"--state-directory={tmp_path}")
    assert out.returncode == 1 and "slurm-gateway health: the gateway is not running" in out.stderr
    for command in ("clusters", "stop", "health", "logs"):
        assert f"\n{command}\n" in helped.stdout, helped.stdout


def test_health_lines_show_each_part_and_below_it_what_it_said_made_printable():
    body = {
        "status": "fail",
        "checks": {
            "slurm": {
                "status": "fail",
                "message": "slurmctld does not answer; see the gateway log",
                "detail": "squeue exited 1: ssh: connect to slurmgw@login1\x1b[2J refused",
                "age": 125.0,
            },
            "proxy": {"status": "warn", "message": "proxy not checked yet"},
        },
    }
    lines = health_lines(body).splitlines()
    assert lines[0] == "Health: fail"
    assert lines[1] == "FAIL  slurm: slurmctld does not answer; see the gateway log"
    assert lines[2].startswith("      2m ago: squeue exited 1: ssh: connect to slurmgw@login1")
    assert "\x1b" not in lines[2]
    assert lines[3] == "WARN  proxy: proxy not checked yet"
    assert len(lines) == 4
