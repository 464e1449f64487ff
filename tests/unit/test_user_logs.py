"""slurm-gateway logs: which directory and files it picks, what it prints, and that no
symbolic link under the user's log directory is followed (on real files in a temp dir)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from slurm_gateway.user_logs import (
    MAX_TAIL_BYTES,
    LogsError,
    Selection,
    UserLogs,
    last_lines,
    log_file_order,
    newest_first,
    printable,
    select,
)


def test_newest_first_by_start_time_then_modification():
    entries = [
        ("20261201-094500-1a2b3c4d", 50.0),
        ("20261202-080000-00000000", 10.0),
        ("20261201-094500-ffffffff", 40.0),  # same second: the later modified wins
        ("notes", 99.0),
        ("20261203-000000-XYZ", 99.0),  # not a log directory's name
    ]
    assert newest_first(entries) == [
        "20261202-080000-00000000",
        "20261201-094500-1a2b3c4d",
        "20261201-094500-ffffffff",
    ]
    assert newest_first([]) == []


def test_scheduler_first_then_workers_by_job_and_index():
    names = ["worker-50_10.log", "CLUSTER", "worker-50_2.log", "worker-9.log", "scheduler-49.log"]
    assert log_file_order(names) == [
        "scheduler-49.log",
        "worker-9.log",
        "worker-50_2.log",
        "worker-50_10.log",
    ]


def test_printable_neutralizes_terminal_control():
    assert printable("a\tb") == "a\tb"
    assert printable("\x1b]0;owned\x07 \u202eevil\r") == "?]0;owned? ?evil?"
    assert printable("x" * 5000) == "x" * 2000


def test_last_lines_drop_a_cut_first_line():
    assert last_lines(b"a\nb\nc\n", 2, whole_file=True) == ["b", "c"]
    assert last_lines(b"tail of a line\nb\n", 5, whole_file=False) == ["b"]
    assert last_lines(b"a\nb\n", 0, whole_file=True) == []
    assert last_lines(b"\xff\xfeok\n", 1, whole_file=True) == ["\ufffd\ufffdok"]


def test_what_an_argument_selects():
    home = "/var/log/slurm-gateway/alice"
    assert select(None, home) == Selection()
    assert select("20261201-094500-1a2b3c4d", home) == Selection(
        directory="20261201-094500-1a2b3c4d"
    )
    assert select(f"{home}/20261201-094500-1a2b3c4d/", home) == Selection(
        directory="20261201-094500-1a2b3c4d"
    )
    assert select("5f2c0e", home) == Selection(cluster="5f2c0e")
    for outside in (
        "/var/log/slurm-gateway/bob/20261201-094500-1a2b3c4d",
        f"{home}/../bob/20261201-094500-1a2b3c4d",
        f"{home}/20261201-094500-1a2b3c4d/scheduler-1.log",
        "relative/20261201-094500-1a2b3c4d",
    ):
        with pytest.raises(LogsError, match="not one of your"):
            select(outside, home)


def _cluster_directory(root, name, cluster, logs, mtime):
    directory = root / name
    directory.mkdir(mode=0o700)
    (directory / "CLUSTER").write_text(f"{cluster}\n")
    for log, text in logs.items():
        (directory / log).write_text(text)
    os.utime(directory, (mtime, mtime))
    return directory


@pytest.fixture
def home(tmp_path):
    """A user's log directory with two clusters' logs, and links planted in it."""
    home = tmp_path / "logs"
    home.mkdir(mode=0o700)
    secret = tmp_path / "secret"
    secret.write_text("SECRET\n")
    _cluster_directory(home, "20261201-094500-1a2b3c4d", "old", {"scheduler-1.log": "old\n"}, 1000)
    latest = _cluster_directory(
        home,
        "20261202-080000-00000000",
        "new",
        {
            "scheduler-7.log": "".join(f"line {i}\n" for i in range(100)) + "\x1b[31mred\n",
            "worker-8_1.log": "w1\n",
            "worker-8_0.log": "w0\n",
        },
        2000,
    )
    (latest / "worker-9.log").symlink_to(secret)
    # A link named like a newer cluster's directory, to another directory.
    other = tmp_path / "20991231-000000-deadbeef"
    _cluster_directory(tmp_path, other.name, "planted", {"scheduler-1.log": "PLANTED\n"}, 3000)
    (home / other.name).symlink_to(other)
    return home


def test_the_latest_real_directory_and_its_logs(home):
    with UserLogs(str(home)) as logs:
        assert logs.directories() == ["20261202-080000-00000000", "20261201-094500-1a2b3c4d"]
        latest = logs.find(Selection())
        assert latest == "20261202-080000-00000000"
        assert logs.cluster_of(latest) == "new"
        # The linked worker log is not listed; the others in order.
        assert logs.files(latest) == ["scheduler-7.log", "worker-8_0.log", "worker-8_1.log"]
        assert logs.tail(latest, "scheduler-7.log", 2) == ["line 99", "?[31mred"]
        with pytest.raises(LogsError, match="a link; not following it"):
            logs.tail(latest, "worker-9.log", 5)
        assert logs.find(Selection(cluster="old")) == "20261201-094500-1a2b3c4d"
        with pytest.raises(LogsError, match="none of your log directories"):
            logs.find(Selection(cluster="planted"))
        with pytest.raises(LogsError, match="no log directory"):
            logs.find(Selection(directory="20991231-000000-deadbeef"))


def test_a_huge_log_is_read_from_its_end_only(home):
    latest = home / "20261202-080000-00000000"
    with open(latest / "scheduler-7.log", "ab") as f:
        f.write(b"x" * (3 * MAX_TAIL_BYTES) + b"\nlast\n")
    with UserLogs(str(home)) as logs:
        assert logs.tail(latest.name, "scheduler-7.log", 3) == ["last"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to give a file to nobody")
def test_a_log_or_cluster_file_of_another_owner_is_not_read(home):
    latest = home / "20261202-080000-00000000"
    for name in ("worker-8_0.log", "CLUSTER"):
        os.chown(latest / name, 65534, 65534)
    with UserLogs(str(home)) as logs:
        with pytest.raises(LogsError, match="worker-8_0.log: owned by uid 65534, not by you"):
            logs.tail(latest.name, "worker-8_0.log", 5)
        assert logs.tail(latest.name, "worker-8_1.log", 5) == ["w1"]
        assert logs.cluster_of(latest.name) == ""


def test_a_user_directory_that_is_a_link_or_open_to_others_is_refused(home, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(home)
    with pytest.raises(LogsError, match="symbolic link"):
        UserLogs(str(link)).__enter__()
    home.chmod(0o755)
    with pytest.raises(LogsError, match="open to other users"):
        UserLogs(str(home)).__enter__()
    with pytest.raises(LogsError, match="you have no cluster logs"):
        UserLogs(str(tmp_path / "missing")).__enter__()


def _logs_command(*args):
    return subprocess.run(
        [sys.executable, "-c", "from slurm_gateway.cli import main; main()", "logs", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command_prints_the_latest_clusters_logs_bounded(home):
    out = _logs_command(f"--log-directory={home}", "-n", "1", "--max-files", "2")
    assert out.returncode == 0, out.stderr
    latest = home / "20261202-080000-00000000"
    assert out.stdout.splitlines() == [
        f"# cluster new: {latest}",
        f"==> {latest}/scheduler-7.log <==",
        "?[31mred",
        f"==> {latest}/worker-8_0.log <==",
        "w0",
        "# 1 more log files (--max-files to see them)",
    ]
    listed = _logs_command(f"--log-directory={home}", "--list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        f"{latest}  new  3 logs",
        f"{home}/20261201-094500-1a2b3c4d  old  1 logs",
    ]
    refused = _logs_command(f"--log-directory={home}", "/etc/20261201-094500-1a2b3c4d")
    assert refused.returncode == 1 and "not one of your" in refused.stderr
    assert "PLANTED" not in out.stdout + listed.stdout and "SECRET" not in out.stdout
