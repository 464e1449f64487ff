"""Users' log directories and files: nobody else can redirect them, nothing reads without bound.

Real directories with real owners (the tests run as root and chown to alice and bob); what
runs as the user in production runs here in a child process as alice, through a fork and
setuid or through the user helper's command line.
"""

import errno
import functools
import json
import os
import pickle
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import slurm_gateway
from slurm_gateway.userfs import (
    UnsafeFile,
    directory_problem,
    open_regular,
    prepare_log_directory,
    read_log_tail,
    read_tail,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root, to give files to alice and bob"
)
ALICE = pwd.getpwnam("alice")
BOB = pwd.getpwnam("bob")
SOURCE = str(Path(slurm_gateway.__file__).parent.parent)


@pytest.fixture
def base():
    """A fresh root-owned directory (0755: alice may pass) under the system's /tmp."""
    path = Path(tempfile.mkdtemp())
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def make_dir(path, mode, owner=None):
    path.mkdir()
    path.chmod(mode)  # after mkdir: the umask does not apply
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return path


def make_link(path, target, owner=None):
    path.symlink_to(target)
    if owner is not None:
        os.lchown(path, owner.pw_uid, owner.pw_gid)
    return path


def naive_problem(path, uid):
    """The check that was fooled: os.stat follows links and only the last component counts."""
    info = os.stat(path)
    return None if info.st_uid == uid and not info.st_mode & 0o077 else "refused"


def as_alice(function, *args, timeout=10):
    """``function(*args)`` in a child process running as alice: its value, or its exception."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become alice, answer through the pipe, never return to pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(ALICE.pw_gid)
            os.setuid(ALICE.pw_uid)
            try:
                answer = ("value", function(*args))
            except Exception as exc:  # handed to the parent
                answer = ("raised", exc)
            with os.fdopen(write_end, "wb") as out:
                pickle.dump(answer, out)
        finally:
            os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + timeout
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_end)
            pytest.fail(f"{function.__name__}{args} as alice did not return within {timeout} s")
        time.sleep(0.01)
    with os.fdopen(read_end, "rb") as answer_file:
        kind, value = pickle.load(answer_file)
    if kind == "raised":
        raise value
    return value


@functools.cache
def _python_for_alice():
    """A python >= 3.11 alice may run (the dev venv's may live in root's home), or None."""
    for python in (sys.executable, "/usr/bin/python3"):
        check = subprocess.run(
            [
                "runuser",
                "-u",
                "alice",
                "--",
                python,
                "-c",
                "import sys; assert sys.version_info >= (3, 11)",
            ],
            capture_output=True,
        )
        if check.returncode == 0:
            return python
    return None


def helper_as_alice(*args, stdin=""):
    """``slurm-gateway-user-helper ARGS`` run as alice: (exit status, JSON answer or None)."""
    python = _python_for_alice()
    if python is None:
        pytest.skip("no python >= 3.11 that alice may run")
    out = subprocess.run(
        [
            "runuser",
            "-u",
            "alice",
            "--",
            "env",
            f"PYTHONPATH={SOURCE}",
            python,
            "-m",
            "slurm_gateway.user_helper",
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    lines = out.stdout.splitlines()
    assert len(lines) <= 1, out.stdout
    return out.returncode, json.loads(lines[0]) if lines else None


@pytest.fixture
def log_root(base):
    """Like /var/log/slurm-gateway: root-owned, mode 1733."""
    return make_dir(base / "logs", 0o1733)


# -- directory_problem -----------------------------------------------------------------------


def test_private_directory_in_a_sticky_root_directory_is_fine(log_root):
    user_dir = make_dir(log_root / "alice", 0o700, ALICE)
    assert directory_problem(str(user_dir), ALICE.pw_uid) is None


def test_a_symlink_to_the_users_own_private_directory_is_refused(log_root):
    real = make_dir(log_root / "alice-real", 0o700, ALICE)
    for owner in (BOB, ALICE, None):  # planted by another user, or even by alice or root
        link = make_link(log_root / "alice", real, owner)
        assert naive_problem(link, ALICE.pw_uid) is None  # the naive check is fooled
        problem = directory_problem(str(link), ALICE.pw_uid)
        uid = owner.pw_uid if owner else 0
        assert problem == (
            f"{link} is a symbolic link (to {real}) owned by uid {uid}; ask the admins to remove it"
        )
        link.unlink()


def test_a_directory_of_another_user_is_refused(log_root):
    user_dir = make_dir(log_root / "alice", 0o700, BOB)
    problem = directory_problem(str(user_dir), ALICE.pw_uid)
    assert problem and str(user_dir) in problem and f"owned by uid {BOB.pw_uid}" in problem


def test_a_directory_open_to_others_is_refused_with_the_chmod(log_root):
    user_dir = make_dir(log_root / "alice", 0o755, ALICE)
    problem = directory_problem(str(user_dir), ALICE.pw_uid)
    assert problem and "has mode 0755" in problem and f"chmod 700 {user_dir}" in problem


def test_an_ancestor_writable_by_others_and_not_sticky_is_refused(base):
    for mode, who in ((0o777, "others"), (0o775, "its group")):
        shared = make_dir(base / "shared", mode)
        user_dir = make_dir(shared / "alice", 0o700, ALICE)
        assert naive_problem(user_dir, ALICE.pw_uid) is None
        problem = directory_problem(str(user_dir), ALICE.pw_uid)
        assert problem == (
            f"{user_dir} cannot be used: its parent {shared} is writable by {who} and not "
            f"sticky; ask the admins to run chmod +t {shared}"
        )
        shutil.rmtree(shared)


def test_an_ancestor_owned_by_another_user_is_refused(base):
    bobs = make_dir(base / "bobs", 0o755, BOB)
    user_dir = make_dir(bobs / "alice", 0o700, ALICE)
    problem = directory_problem(str(user_dir), ALICE.pw_uid)
    assert problem and f"its parent {bobs} is owned by uid {BOB.pw_uid}" in problem


def test_a_root_symlink_ancestor_in_a_root_only_directory_is_resolved(base, log_root):
    make_dir(log_root / "alice", 0o700, ALICE)
    for target in ("logs", str(log_root), "./x/../logs/"):  # relative, absolute, roundabout
        (base / "x").mkdir()
        link = make_link(base / "link", target)
        assert directory_problem(str(link / "alice"), ALICE.pw_uid) is None, target
        link.unlink()
        (base / "x").rmdir()


def test_links_are_checked_where_they_lead(base, log_root):
    make_dir(log_root / "alice", 0o700, ALICE)
    open_dir = make_dir(base / "open", 0o777)
    make_dir(open_dir / "alice", 0o700, ALICE)
    link = make_link(base / "link", "open")  # root's link into a directory anyone can change
    problem = directory_problem(str(link / "alice"), ALICE.pw_uid)
    assert problem and f"{open_dir} is writable by others and not sticky" in problem


def test_a_user_owned_symlink_ancestor_is_refused(base, log_root):
    make_dir(log_root / "alice", 0o700, ALICE)
    bobs_sticky = make_dir(base / "bobs", 0o1777, BOB)
    link = make_link(bobs_sticky / "alink", log_root, ALICE)
    assert naive_problem(link / "alice", ALICE.pw_uid) is None
    problem = directory_problem(str(link / "alice"), ALICE.pw_uid)
    assert problem and f"its ancestor {bobs_sticky} is owned by uid {BOB.pw_uid}" in problem
    link = make_link(log_root / "alink", log_root, ALICE)  # even in a directory of root's
    problem = directory_problem(str(link / "alice"), ALICE.pw_uid)
    assert problem.startswith(f"{link / 'alice'} cannot be used: {link} is a symbolic link owned")


def test_link_loops_and_missing_paths_are_reported(base):
    make_link(base / "loop", "loop")
    problem = directory_problem(str(base / "loop" / "alice"), ALICE.pw_uid)
    assert "too many symbolic links" in problem
    assert directory_problem(str(base / "nope"), ALICE.pw_uid) == f"{base / 'nope'} does not exist"
    assert "not a normalised absolute path" in directory_problem("logs/alice", ALICE.pw_uid)
    assert "not a normalised absolute path" in directory_problem("/a/../b", ALICE.pw_uid)


def test_the_file_system_is_reached_only_through_the_given_functions():
    def fake_lstat(path):
        kind = stat.S_IFLNK if path == "/logs" else stat.S_IFDIR
        owner = ALICE.pw_uid if path == "/real/alice" else 0
        mode = 0o1733 if path == "/real" else 0o755 if path == "/" else 0o700
        return os.stat_result((kind | mode, 0, 0, 0, owner, 0, 0, 0, 0, 0))

    assert (
        directory_problem("/logs/alice", ALICE.pw_uid, lstat=fake_lstat, readlink=lambda _: "real")
        is None
    )


# -- prepare_log_directory, as alice -------------------------------------------------------------


def test_prepare_creates_private_directories_and_the_cluster_file(log_root):
    user_dir = log_root / "alice"
    for _ in range(2):  # and again, over what exists
        assert as_alice(prepare_log_directory, str(user_dir), "c-1", "secret-name") is None
    for path in (user_dir, user_dir / "c-1"):
        info = path.lstat()
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
        assert info.st_uid == ALICE.pw_uid
    cluster_file = (user_dir / "c-1" / "CLUSTER").lstat()
    assert stat.S_IMODE(cluster_file.st_mode) == 0o600 and cluster_file.st_uid == ALICE.pw_uid
    assert (user_dir / "c-1" / "CLUSTER").read_text() == "secret-name\n"
    assert as_alice(prepare_log_directory, str(user_dir), "c-2", None) is None
    assert not (user_dir / "c-2" / "CLUSTER").exists()


def test_prepare_refuses_a_planted_user_directory(log_root):
    alices_real = make_dir(log_root / "alice-real", 0o700, ALICE)
    make_link(log_root / "alice", alices_real, BOB)
    problem = as_alice(prepare_log_directory, str(log_root / "alice"), "c-1", "secret")
    assert problem and "is a symbolic link" in problem
    assert list(alices_real.iterdir()) == []
    (log_root / "alice").unlink()
    make_dir(log_root / "alice", 0o700, BOB)
    problem = as_alice(prepare_log_directory, str(log_root / "alice"), "c-1", "secret")
    assert problem and f"owned by uid {BOB.pw_uid}" in problem


def test_prepare_refuses_an_unsafe_parent_before_creating_anything(base):
    shared = make_dir(base / "shared", 0o777)
    problem = as_alice(prepare_log_directory, str(shared / "alice"), "c-1", None)
    assert problem and "not sticky" in problem
    assert list(shared.iterdir()) == []


def test_prepare_never_follows_a_symlink_under_the_user_directory(log_root):
    user_dir = make_dir(log_root / "alice", 0o700, ALICE)
    elsewhere = make_dir(user_dir / "elsewhere", 0o700, ALICE)
    make_link(user_dir / "c-1", elsewhere, ALICE)
    problem = as_alice(prepare_log_directory, str(user_dir), "c-1", "secret")
    assert problem == f"{user_dir / 'c-1'} is a symbolic link; remove it"
    make_dir(user_dir / "c-2", 0o700, ALICE)
    make_link(user_dir / "c-2" / "CLUSTER", elsewhere / "target", ALICE)
    problem = as_alice(prepare_log_directory, str(user_dir), "c-2", "secret")
    assert problem == f"{user_dir / 'c-2' / 'CLUSTER'} is a symbolic link; remove it"
    assert list(elsewhere.iterdir()) == []


def test_prepare_refuses_bad_subdirectory_names(log_root):
    for name in ("..", ".", "a/b", "", "a b", "x\n"):
        problem = prepare_log_directory(str(log_root / "alice"), name, None)
        assert problem and "not a valid log subdirectory name" in problem, name
    assert not (log_root / "alice").exists()


def test_the_helper_creates_the_log_directory_with_the_name_from_stdin(log_root):
    user_dir = log_root / "alice"
    assert helper_as_alice("log-dir", str(user_dir), "c-1", stdin="name-1\n") == (0, {"ok": True})
    assert (user_dir / "c-1" / "CLUSTER").read_text() == "name-1\n"
    assert helper_as_alice("log-dir", str(user_dir), "c-2") == (0, {"ok": True})
    assert not (user_dir / "c-2" / "CLUSTER").exists()
    status, answer = helper_as_alice("log-dir", str(log_root), "c-1")
    assert status == 0 and "owned by uid 0" in answer["error"]
    for bad in ("logs/alice", f"{log_root}/../alice"):
        assert helper_as_alice("log-dir", bad, "c-1") == (2, None)


# -- read_log_tail ---------------------------------------------------------------------------


def test_tail_returns_the_last_non_empty_lines_stripped_and_cut(base):
    log = base / "job.log"
    log.write_text("".join(f"  line {i}  \n\n" for i in range(30)) + "x" * 600 + "\n")
    lines = read_log_tail(str(log))
    assert lines == [f"line {i}" for i in range(11, 30)] + ["x" * 500]
    assert read_log_tail(str(log), max_lines=2) == ["line 29", "x" * 500]
    assert read_log_tail(str(log), max_bytes=601) == ["x" * 500]


def test_tail_of_a_huge_file_without_newlines_is_fast_and_bounded(base):
    log = base / "huge.log"
    log.touch()
    os.truncate(log, 2 * 1024**3)  # sparse: 2 GB of NUL bytes, no newline
    os.chown(log, ALICE.pw_uid, ALICE.pw_gid)
    started = time.monotonic()
    lines = as_alice(read_log_tail, str(log))
    assert time.monotonic() - started < 1
    assert len(lines) <= 1 and all(len(line) <= 500 for line in lines)


def test_tail_refuses_links_fifos_and_directories_without_blocking(base):
    target = base / "target.log"
    target.write_text("secret\n")
    make_link(base / "link.log", target)
    with pytest.raises(ValueError, match="is a symbolic link"):
        as_alice(read_log_tail, str(base / "link.log"))
    os.mkfifo(base / "fifo.log")
    with pytest.raises(ValueError, match="is not a regular file"):
        as_alice(read_log_tail, str(base / "fifo.log"), timeout=5)
    with pytest.raises(ValueError, match="is not a regular file"):
        read_log_tail(str(base))
    with pytest.raises(FileNotFoundError):
        read_log_tail(str(base / "nope.log"))


def test_tail_refuses_a_file_the_user_does_not_own(base):
    theirs = base / "theirs.log"
    theirs.write_text("bob's\n")
    os.chown(theirs, BOB.pw_uid, BOB.pw_gid)
    theirs.chmod(0o644)  # readable by alice, but not hers
    with pytest.raises(ValueError, match=f"is owned by uid {BOB.pw_uid}, not by you"):
        as_alice(read_log_tail, str(theirs))


# -- open_regular, read_tail (shared with slurm-gateway logs) --------------------------------


def test_read_tail_reads_the_end_only_and_says_whether_it_is_all(base):
    log = base / "job.log"
    log.write_bytes(b"0123456789")
    uid = os.getuid()
    assert read_tail(str(log), 4, uid) == (b"6789", False)
    assert read_tail(str(log), 10, uid) == (b"0123456789", True)
    directory_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read_tail("job.log", 3, uid, directory_fd) == (b"789", False)
    finally:
        os.close(directory_fd)


def test_open_regular_refuses_links_fifos_directories_and_others_files(base):
    log = base / "job.log"
    log.write_text("x\n")
    fd = open_regular(str(log), os.getuid())
    try:
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)
    make_link(base / "link.log", log)
    with pytest.raises(OSError) as raised:
        open_regular(str(base / "link.log"), os.getuid())
    assert raised.value.errno == errno.ELOOP
    os.mkfifo(base / "fifo.log")
    for name in ("fifo.log", "."):
        with pytest.raises(UnsafeFile, match="not a regular file"):
            open_regular(str(base / name), os.getuid())
    with pytest.raises(UnsafeFile, match="owned by uid 0, not by you"):
        open_regular(str(log), ALICE.pw_uid)
    with pytest.raises(FileNotFoundError):
        read_tail(str(base / "nope.log"), 10, os.getuid())


def test_the_helper_reads_the_tail_as_the_user(base):
    mine = base / "mine.log"
    mine.write_text("first\nlast\n")
    os.chown(mine, ALICE.pw_uid, ALICE.pw_gid)
    mine.chmod(0o600)
    assert helper_as_alice("log-tail", str(mine)) == (0, {"lines": ["first", "last"]})
    assert helper_as_alice("log-tail", str(mine), "--bytes", "5") == (0, {"lines": ["last"]})
    assert helper_as_alice("log-tail", str(base / "nope")) == (0, {"error": "no such file"})
    secret = base / "secret.log"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    status, answer = helper_as_alice("log-tail", str(secret))
    assert status == 0 and answer == {"error": f"cannot read {secret}: Permission denied"}
    assert helper_as_alice("log-tail", "mine.log")[0] == 2
