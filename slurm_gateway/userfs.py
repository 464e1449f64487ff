"""The users' log directories and files, handled so that no other user can redirect them.

Other users of the cluster are hostile: they can create files and symbolic links in shared
directories (the log root is mode 1733) and race between a check and a use. This module
holds the one check of a per-user directory (:func:`directory_problem`, run by the gateway
before every job submission and by the user helper as the user) and the two operations the
user helper performs as the user: creating a log directory (:func:`prepare_log_directory`)
and reading the end of a log file (:func:`read_log_tail`), neither of which follows a
symbolic link under the user's directory nor reads more than a bounded number of bytes;
``slurm-gateway logs`` reads the same way (:func:`open_regular`, :func:`read_tail`).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable

# Linux's own limit on the symbolic links followed while resolving one path.
MAX_LINKS = 40
MAX_LINE_CHARS = 500
CLUSTER_FILE = "CLUSTER"
_COMPONENT = re.compile(r"[A-Za-z0-9._-]+")
# How logs are opened for reading: never through a link, never blocking, not inherited.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _is_normal_absolute(path: str) -> bool:
    return path.startswith("/") and not path.startswith("//") and os.path.normpath(path) == path


def _ancestor_problem(path: str, name: str, info: os.stat_result, owner_uid: int) -> str | None:
    """Why the directory ``name`` (an ancestor of ``path``) lets others redirect ``path``."""
    relation = "parent" if name == os.path.dirname(path) else "ancestor"
    if not stat.S_ISDIR(info.st_mode):
        return f"{path} cannot be used: its {relation} {name} is not a directory"
    if info.st_uid not in (0, owner_uid):
        return (
            f"{path} cannot be used: its {relation} {name} is owned by uid {info.st_uid}, "
            f"who could replace it; ask the admins to fix the log directory setting"
        )
    writable = "others" if info.st_mode & stat.S_IWOTH else "its group"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        return (
            f"{path} cannot be used: its {relation} {name} is writable by {writable} and not "
            f"sticky; ask the admins to run chmod +t {name}"
        )
    return None


def _final_problem(path: str, info: os.stat_result, owner_uid: int, target: str) -> str | None:
    """Why ``path`` itself (lstat ``info``) is not a private directory of ``owner_uid``."""
    if stat.S_ISLNK(info.st_mode):
        return (
            f"{path} is a symbolic link (to {target}) owned by uid {info.st_uid}; "
            f"ask the admins to remove it"
        )
    if not stat.S_ISDIR(info.st_mode):
        return f"{path} is not a directory; ask the admins to remove it"
    if info.st_uid != owner_uid:
        return (
            f"{path} is owned by uid {info.st_uid}, not by you (uid {owner_uid}); "
            f"ask the admins to remove it"
        )
    if info.st_mode & 0o077:
        return (
            f"{path} has mode {stat.S_IMODE(info.st_mode):04o}, open to other users; "
            f"run chmod 700 {path}"
        )
    return None


def _path_problem(
    path: str,
    owner_uid: int,
    lstat: Callable[[str], os.stat_result],
    readlink: Callable[[str], str],
    missing_ok: bool,
) -> str | None:
    """:func:`directory_problem`; with ``missing_ok``, a missing last component is fine."""
    if not _is_normal_absolute(path):
        return f"{path} is not a normalised absolute path; ask the admins to fix it"
    todo = [part for part in path.split("/") if part]
    current = "/"
    links = 0
    try:
        if not todo:
            return _final_problem(path, lstat("/"), owner_uid, "")
        problem = _ancestor_problem(path, "/", lstat("/"), owner_uid)
        if problem:
            return problem
        while True:  # ends at the last component of ``path``, always the last in ``todo``
            part = todo.pop(0)
            if part in ("", "."):
                continue
            if part == "..":  # only from a link's target; ``current`` has no links in it
                current = os.path.dirname(current)
                continue
            name = os.path.join(current, part)
            try:
                info = lstat(name)
            except FileNotFoundError:
                if not todo and missing_ok:
                    return None
                what = "does not exist" if not todo else f"cannot be used: {name} does not exist"
                return f"{path} {what}"
            if not todo:
                target = readlink(name) if stat.S_ISLNK(info.st_mode) else ""
                return _final_problem(path, info, owner_uid, target)
            if stat.S_ISLNK(info.st_mode):
                if info.st_uid != 0:
                    return (
                        f"{path} cannot be used: {name} is a symbolic link owned by uid "
                        f"{info.st_uid}, who could re-point it; ask the admins to fix the "
                        f"log directory setting"
                    )
                links += 1
                if links > MAX_LINKS:
                    return f"{path} cannot be used: too many symbolic links (a loop?)"
                target = readlink(name)
                if target.startswith("/"):
                    current = "/"
                todo[:0] = target.split("/")
                continue
            problem = _ancestor_problem(path, name, info, owner_uid)
            if problem:
                return problem
            current = name
    except OSError as exc:
        return f"{path} cannot be checked: {exc.strerror or exc}"


def directory_problem(
    path: str,
    owner_uid: int,
    *,
    lstat: Callable[[str], os.stat_result] = os.lstat,
    readlink: Callable[[str], str] = os.readlink,
) -> str | None:
    """Why ``path`` is not a private directory only root and ``owner_uid`` can redirect.

    ``path`` must be absolute and normalised. Every ancestor must be a directory owned by
    root or ``owner_uid``, sticky if writable by group or others; an ancestor may be a
    symbolic link owned by root, which is then resolved (and its target checked the same
    way). ``path`` itself must be a real directory, not a link, owned by ``owner_uid`` with
    no permission for group or others. The file system is reached only through ``lstat``
    and ``readlink``. The answer is None if all is well, else one sentence for the user,
    naming the path, what is wrong and the fix.
    """
    return _path_problem(path, owner_uid, lstat, readlink, missing_ok=False)


def existing_directory_problem(path: str, owner_uid: int) -> str | None:
    """As :func:`directory_problem`, but a directory that does not exist yet is no problem
    (the user's own helper creates it, privately)."""
    if not os.path.lexists(path):
        return None
    return directory_problem(path, owner_uid)


def _open_directory(name: str, path: str, dir_fd: int | None = None) -> tuple[int, os.stat_result]:
    """Open the directory ``name`` (relative to ``dir_fd``) without following a link.

    Returns the descriptor and its fstat; raises ValueError if ``name`` is a link or not a
    directory.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise ValueError(f"{path} is a symbolic link; remove it") from exc
        raise ValueError(f"{path} is not a directory; remove it") from exc
    return fd, os.fstat(fd)


def _write_cluster_file(directory_fd: int, path: str, cluster_name: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(CLUSTER_FILE, flags, 0o600, dir_fd=directory_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symbolic link; remove it") from exc
        raise ValueError(f"{path} cannot be written ({exc.strerror}); remove it") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file; remove it")
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)
        os.write(fd, f"{cluster_name}\n".encode())
    finally:
        os.close(fd)


def _prepare_subdirectory(user_fd: int, sub_path: str, cluster_name: str | None) -> None:
    """Create the subdirectory (the last component of ``sub_path``) in ``user_fd``."""
    name = os.path.basename(sub_path)
    try:
        os.mkdir(name, 0o700, dir_fd=user_fd)
    except FileExistsError:
        pass
    sub_fd, info = _open_directory(name, sub_path, dir_fd=user_fd)
    try:
        if info.st_uid != os.getuid():
            raise ValueError(
                f"{sub_path} is owned by uid {info.st_uid}, not by you; ask the admins to remove it"
            )
        if cluster_name:
            _write_cluster_file(sub_fd, os.path.join(sub_path, CLUSTER_FILE), cluster_name)
    finally:
        os.close(sub_fd)


def prepare_log_directory(
    user_directory: str, subdirectory: str, cluster_name: str | None
) -> str | None:
    """Create ``user_directory/subdirectory`` as the calling user; None, or the problem.

    Run as the user. ``user_directory`` is created with mode 0700 if missing and must then
    pass :func:`directory_problem`; ``subdirectory`` (one path component) is created in it
    (0700) through a descriptor of the opened directory, and ``cluster_name``, if given,
    written into its file ``CLUSTER`` (0600). No symbolic link is followed under
    ``user_directory``.
    """
    if not _COMPONENT.fullmatch(subdirectory) or subdirectory in (".", ".."):
        return f"{subdirectory!r} is not a valid log subdirectory name"
    uid = os.getuid()
    problem = _path_problem(user_directory, uid, os.lstat, os.readlink, missing_ok=True)
    if problem:
        return problem
    try:
        os.mkdir(user_directory, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"cannot create {user_directory}: {exc.strerror}"
    problem = directory_problem(user_directory, uid)
    if problem:
        return problem
    sub_path = os.path.join(user_directory, subdirectory)
    try:
        user_fd, info = _open_directory(user_directory, user_directory)
        try:
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o077:
                return (
                    f"{user_directory} changed while it was checked (now owned by uid "
                    f"{info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o}); try again"
                )
            _prepare_subdirectory(user_fd, sub_path, cluster_name)
        finally:
            os.close(user_fd)
    except ValueError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot create {sub_path}: {exc.strerror}"
    return None


def read_bounded(fd: int, offset: int, limit: int) -> bytes:
    """At most ``limit`` bytes of ``fd`` from ``offset`` (fewer at its end)."""
    os.lseek(fd, offset, os.SEEK_SET)
    chunks, left = [], limit
    while left > 0:
        chunk = os.read(fd, left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class UnsafeFile(OSError):
    """A file :func:`open_regular` refuses (``strerror``: why, e.g. ``not a regular file``)."""


def open_regular(name: str, owner_uid: int, dir_fd: int | None = None) -> int:
    """A read-only descriptor of the regular file ``name`` (relative to ``dir_fd``) that
    ``owner_uid`` owns.

    Never through a symbolic link at ``name``'s last component (OSError ``ELOOP``), never
    blocking on a FIFO or device, not inherited by child processes. Raises
    :class:`UnsafeFile` for anything but a regular file of ``owner_uid``, OSError (e.g.
    FileNotFoundError) if it cannot be opened.
    """
    fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnsafeFile(errno.EINVAL, "not a regular file")
    if info.st_uid != owner_uid:
        os.close(fd)
        raise UnsafeFile(errno.EPERM, f"owned by uid {info.st_uid}, not by you")
    return fd


def read_tail(
    name: str, max_bytes: int, owner_uid: int, dir_fd: int | None = None
) -> tuple[bytes, bool]:
    """The last ``max_bytes`` bytes of the file ``name`` opened by :func:`open_regular`
    (which raises what it raises), and whether they are the whole file. Memory and time
    are bounded whatever the file's size."""
    fd = open_regular(name, owner_uid, dir_fd)
    try:
        offset = max(0, os.fstat(fd).st_size - max_bytes)
        return read_bounded(fd, offset, max_bytes), offset == 0
    finally:
        os.close(fd)


def read_log_tail(path: str, max_bytes: int = 65536, max_lines: int = 20) -> list[str]:
    """The last ``max_lines`` non-empty lines in the last ``max_bytes`` bytes of ``path``.

    Run as the user. Each line is stripped and cut to 500 characters; memory and time are
    bounded whatever the file. Raises ValueError if ``path`` is a symbolic link, not a
    regular file or not the user's own, OSError (e.g. FileNotFoundError) if it cannot be
    opened.
    """
    try:
        data, _ = read_tail(path, max_bytes, os.getuid())
    except UnsafeFile as exc:
        raise ValueError(f"{path} is {exc.strerror}") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symbolic link; not following it") from exc
        raise
    text = data.decode("utf-8", errors="replace")
    lines = [line.strip()[:MAX_LINE_CHARS] for line in text.splitlines()]
    return [line for line in lines if line][-max_lines:]
