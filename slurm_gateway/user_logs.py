"""``slurm-gateway logs``: a user's own cluster logs, read as that user.

Each cluster's jobs log into ``<user directory>/<start time>-<random>/`` (``scheduler-<job
id>.log``, ``worker-<job id>.log``) with a file ``CLUSTER`` holding the cluster's name
(:mod:`slurm_gateway.userfs` makes them). This runs as the user, so the OS keeps other users'
directories closed; on top of that, the user's directory must pass
:func:`~slurm_gateway.userfs.directory_problem` (a private directory that no other user can
redirect), and everything under it is opened through directory descriptors with
``O_NOFOLLOW``: no symbolic link, planted or not, is followed, and only regular files of the
user are read (:func:`~slurm_gateway.userfs.read_tail`). What is printed is bounded:
the last lines of each file, from its last bytes only, at most so many files.
"""

from __future__ import annotations

import errno
import os
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from .userfs import (
    CLUSTER_FILE,
    READ_FLAGS,
    directory_problem,
    open_regular,
    read_bounded,
    read_tail,
)

# A cluster's log directory: the start time (sortable) and a random part.
SUBDIRECTORY = re.compile(r"^(\d{8}-\d{6})-[0-9a-f]{8}$")
LOG_FILE = re.compile(r"^(scheduler|worker)-(\d+)(?:_(\d+))?\.log$")
# Bounds: directories looked at, bytes of CLUSTER, bytes read from the end of each log,
# characters of each printed line.
MAX_DIRECTORIES = 20000
MAX_CLUSTER_FILE = 4096
MAX_TAIL_BYTES = 1 << 20
MAX_LINE_CHARS = 2000


class LogsError(Exception):
    """What ``slurm-gateway logs`` tells the user instead of logs (one sentence)."""


def newest_first(entries: Iterable[tuple[str, float]]) -> list[str]:
    """The names of cluster log directories among ``entries`` (name, modification time),
    newest first: by the start time in the name, then by modification time. Names that
    are not log directories are left out."""
    found = [
        (m.group(1), mtime, name) for name, mtime in entries if (m := SUBDIRECTORY.match(name))
    ]
    return [name for *_, name in sorted(found, reverse=True)]


def log_file_order(names: Iterable[str]) -> list[str]:
    """The job log files among ``names``: the scheduler's first, then workers by job id
    and array index."""

    def key(name: str) -> tuple:
        m = LOG_FILE.match(name)
        return (m.group(1) != "scheduler", int(m.group(2)), int(m.group(3) or -1))

    return sorted((n for n in names if LOG_FILE.match(n)), key=key)


def printable(line: str, max_chars: int = MAX_LINE_CHARS) -> str:
    """``line`` with control and formatting characters (terminal escapes) shown as ``?``,
    tabs kept, cut to ``max_chars``."""
    line = line[:max_chars]
    return "".join(
        "?" if char != "\t" and unicodedata.category(char) in ("Cc", "Cf") else char
        for char in line
    )


def last_lines(data: bytes, count: int, whole_file: bool) -> list[str]:
    """The last ``count`` lines of ``data`` (the end of a file; without ``whole_file``
    its first line is a fragment and left out), decoded and made :func:`printable`."""
    lines = data.decode("utf-8", errors="replace").splitlines()
    if not whole_file and lines:
        lines = lines[1:]
    return [printable(line) for line in lines[-count:]] if count > 0 else []


@dataclass(frozen=True)
class Selection:
    """Which log directory an argument of ``slurm-gateway logs`` names: a directory
    name (``directory``), or a cluster to find by its ``CLUSTER`` file (``cluster``)."""

    directory: str | None = None
    cluster: str | None = None


def select(argument: str | None, user_directory: str) -> Selection:
    """What ``argument`` names: nothing (the latest directory), a log directory (its name,
    or its path, which must be in ``user_directory``) or a cluster name. Raises
    :class:`LogsError` for a path outside ``user_directory``."""
    if not argument:
        return Selection()
    if "/" in argument:
        parent, name = os.path.split(os.path.normpath(argument))
        if parent != os.path.normpath(user_directory) or not SUBDIRECTORY.match(name):
            raise LogsError(
                f"{argument} is not one of your cluster log directories (they are in "
                f"{user_directory})"
            )
        return Selection(directory=name)
    if SUBDIRECTORY.match(argument):
        return Selection(directory=argument)
    return Selection(cluster=argument)


class UserLogs:
    """The cluster log directories of the calling user, in ``user_directory``."""

    def __init__(self, user_directory: str, uid: int | None = None):
        self.path = os.path.normpath(user_directory)
        self.uid = os.getuid() if uid is None else uid

    def __enter__(self) -> UserLogs:
        if not os.path.lexists(self.path):
            raise LogsError(f"you have no cluster logs: {self.path} does not exist")
        problem = directory_problem(self.path, self.uid)
        if problem:
            raise LogsError(problem)
        self.fd = self._open_directory(self.path)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)

    def _open_directory(self, name: str, dir_fd: int | None = None) -> int:
        path = name if dir_fd is None else os.path.join(self.path, name)
        try:
            fd = os.open(name, READ_FLAGS | os.O_DIRECTORY, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise LogsError(f"{path} is not a directory (a link?); not following it") from exc
            raise LogsError(f"cannot open {path}: {exc.strerror}") from exc
        info = os.fstat(fd)
        if info.st_uid != self.uid:
            os.close(fd)
            raise LogsError(f"{path} is owned by uid {info.st_uid}, not by you")
        return fd

    def directories(self) -> list[str]:
        """The cluster log directories, newest first (real directories only, no links)."""
        entries = []
        with os.scandir(self.fd) as scan:
            for entry in scan:
                if len(entries) >= MAX_DIRECTORIES:
                    break
                if SUBDIRECTORY.match(entry.name) and entry.is_dir(follow_symlinks=False):
                    entries.append((entry.name, entry.stat(follow_symlinks=False).st_mtime))
        return newest_first(entries)

    def cluster_of(self, directory: str) -> str:
        """The cluster name recorded in ``directory`` ('' if none can be read)."""
        directory_fd = self._open_directory(directory, self.fd)
        try:
            fd = open_regular(CLUSTER_FILE, self.uid, directory_fd)
            try:
                data = read_bounded(fd, 0, MAX_CLUSTER_FILE)
            finally:
                os.close(fd)
        except OSError:
            return ""
        finally:
            os.close(directory_fd)
        return printable(data.decode("utf-8", errors="replace").strip(), 200)

    def find(self, selection: Selection) -> str:
        """The directory ``selection`` names; raises :class:`LogsError` if there is none."""
        directories = self.directories()
        if selection.directory:
            if selection.directory in directories:
                return selection.directory
            raise LogsError(f"you have no log directory {self.path}/{selection.directory}")
        if selection.cluster:
            for directory in directories:
                if self.cluster_of(directory) == selection.cluster:
                    return directory
            raise LogsError(
                f"none of your log directories in {self.path} is of a cluster named "
                f"{printable(selection.cluster, 100)} (slurm-gateway logs --list shows them)"
            )
        if not directories:
            raise LogsError(f"you have no cluster logs in {self.path}")
        return directories[0]

    def files(self, directory: str) -> list[str]:
        """The job log files of ``directory`` (regular files only), in print order."""
        directory_fd = self._open_directory(directory, self.fd)
        try:
            with os.scandir(directory_fd) as scan:
                names = [e.name for e in scan if e.is_file(follow_symlinks=False)]
        finally:
            os.close(directory_fd)
        return log_file_order(names)

    def tail(self, directory: str, name: str, count: int) -> list[str]:
        """The last ``count`` lines of the log ``name`` in ``directory``, never through a
        link, from at most its last :data:`MAX_TAIL_BYTES` bytes (a file that is not the
        user's own regular file is refused)."""
        directory_fd = self._open_directory(directory, self.fd)
        try:
            data, whole_file = read_tail(name, MAX_TAIL_BYTES, self.uid, directory_fd)
        except OSError as exc:
            reason = "a link; not following it" if exc.errno == errno.ELOOP else exc.strerror
            raise LogsError(f"{self.path}/{directory}/{name}: {reason}") from exc
        finally:
            os.close(directory_fd)
        return last_lines(data, count, whole_file)
