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
loop (in a pool of its own) and within a time limit, and no identity means a full check.
Not seen: packages an environment reaches outside its prefix (a ``.pth`` file naming
another directory, system site-packages); their changes wait for ``env_check_max_age``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from .envcheck import Identity, identity_from_json, stat_identity

#: Seconds the gateway waits for an environment's identity before checking it in full.
IDENTITY_TIMEOUT = 2.0

#: Threads that stat environments: a hung file system ties up these, nothing else of the
#: gateway's (their reads time out and the request is checked in full).
STAT_THREADS = 4
_stat_pool = ThreadPoolExecutor(STAT_THREADS, thread_name_prefix="env-identity")

#: Environments remembered per user (the least recently checked go first).
MAX_ENTRIES_PER_USER = 16


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
    """The identity of ``prefix``: stat by the gateway in a thread of its own pool, or if
    it may not look, ``as_the_user()`` (the user helper's ``env-id`` answer, None if it has
    none); None if neither answers within ``timeout`` seconds (a hung file system): then
    the request is checked in full."""

    async def read() -> Identity | None:
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(_stat_pool, stat_identity, prefix)
        except PermissionError:
            return identity_from_json(await as_the_user())

    try:
        return await asyncio.wait_for(read(), timeout)
    except (TimeoutError, OSError):
        return None
