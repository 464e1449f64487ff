"""Reusing a job environment's check while the environment is unchanged.

Checking a ``conda_env`` (:mod:`slurm_gateway.envcheck`) starts its python as the user,
which is most of what the gateway itself adds to a cluster's start. A passed check is kept
per (user, prefix) with the environment's *identity*: device, inode, size, mtime and ctime
of the prefix, its ``bin/python`` (followed: a venv's link target counts), ``conda-meta`` or
``pyvenv.cfg`` and every ``lib/python*/site-packages`` (installing or removing a package
changes that directory or ``conda-meta``). A request whose identity is the same, within
``env_check_max_age`` seconds of the check, is not checked again; anything else is.

Who can change the environment is whoever can write to it: the user, an admin, or another
user owning a shared one. ctime cannot be set back by anyone but root, so a change cannot be
hidden behind restored mtimes. Only passed checks are kept, and only for the user who was
checked: a stale entry can at worst let her own cluster start and then fail on the node
(the job script checks ``bin/python`` again and the failure carries the log's last line),
never let one user reuse another's check. The identity is read by the gateway if it can
stat the paths, else by the user helper as the user (``env-id``); either way off the event
loop and within a time limit, and no identity means a full check.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

#: What an environment is identified by: per path, its stat fields or None if absent.
Identity = tuple[tuple[int, ...] | None, ...]

#: Seconds the gateway waits for an environment's identity before checking it in full.
IDENTITY_TIMEOUT = 2.0

#: Environments remembered per user (the least recently checked go first).
MAX_ENTRIES_PER_USER = 16


def identity_paths(prefix: str) -> list[str]:
    """The paths whose stat identifies the environment at ``prefix``. Raises
    ``PermissionError`` if its ``lib`` may not be listed (not silently left out)."""
    lib = os.path.join(prefix, "lib")
    try:
        names = os.listdir(lib)
    except (FileNotFoundError, NotADirectoryError):
        names = []
    fixed = [os.path.join(prefix, p) for p in ("bin/python", "conda-meta", "pyvenv.cfg")]
    site = [os.path.join(lib, n, "site-packages") for n in sorted(names) if n.startswith("python")]
    return [prefix, *fixed, *site]


def stat_identity(prefix: str) -> Identity | None:
    """The identity of the environment at ``prefix`` as seen by the caller, or None if its
    prefix or python cannot be seen (then only a full check can tell what is wrong).
    Raises ``PermissionError`` if a path may not be looked at."""
    identity = []
    for number, path in enumerate(identity_paths(prefix)):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if number < 2:  # the prefix or its python
                return None
            identity.append(None)
            continue
        identity.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(identity)


def identity_from_json(value: object) -> Identity | None:
    """An identity as printed by the user helper (lists), or None if it is not one."""
    if not isinstance(value, list):
        return None
    identity = []
    for item in value:
        if item is None:
            identity.append(None)
        elif isinstance(item, list) and all(
            isinstance(n, int) and not isinstance(n, bool) for n in item
        ):
            identity.append(tuple(item))
        else:
            return None
    return tuple(identity)


class EnvCache:
    """Passed environment checks per user: ``{prefix: (identity, checked_at)}``."""

    def __init__(self, max_age: float, max_per_user: int = MAX_ENTRIES_PER_USER):
        self.max_age = max_age
        self.max_per_user = max_per_user
        self._users: dict[str, OrderedDict[str, tuple[Identity, float]]] = {}

    def is_known_good(
        self, username: str, prefix: str, identity: Identity | None, now: float
    ) -> bool:
        """Whether ``prefix`` passed its check for ``username`` less than ``max_age``
        seconds before ``now`` with the same ``identity``. A stale entry is dropped."""
        entries = self._users.get(username)
        entry = entries.get(prefix) if entries else None
        if entry is None or identity is None:
            return False
        known, checked_at = entry
        if known == identity and 0 <= now - checked_at < self.max_age:
            return True
        self.forget(username, prefix)
        return False

    def passed(self, username: str, prefix: str, identity: Identity | None, now: float) -> None:
        """Remember that ``prefix`` passed its check for ``username`` with ``identity``
        (nothing is remembered without one), dropping her oldest entries beyond the bound."""
        if identity is None or self.max_age <= 0:
            return
        entries = self._users.setdefault(username, OrderedDict())
        entries.pop(prefix, None)
        entries[prefix] = (identity, now)
        while len(entries) > self.max_per_user:
            entries.popitem(last=False)

    def forget(self, username: str, prefix: str) -> None:
        """Drop what is known of ``prefix`` for ``username``."""
        entries = self._users.get(username)
        if entries is not None:
            entries.pop(prefix, None)
            if not entries:
                del self._users[username]

    def entries(self, username: str) -> Sequence[str]:
        """The prefixes remembered for ``username``, oldest first."""
        return list(self._users.get(username, ()))


async def read_identity(
    prefix: str, as_the_user: Callable[[], Awaitable[object]], timeout: float = IDENTITY_TIMEOUT
) -> Identity | None:
    """The identity of ``prefix``: stat by the gateway in a thread, or if it may not look,
    ``as_the_user()`` (the user helper's ``env-id`` answer, None if it has none); None if
    neither answers within ``timeout`` seconds (a hung file system): a full check."""

    async def read() -> Identity | None:
        try:
            return await asyncio.to_thread(stat_identity, prefix)
        except PermissionError:
            return identity_from_json(await as_the_user())

    try:
        return await asyncio.wait_for(read(), timeout)
    except (TimeoutError, OSError):
        return None
