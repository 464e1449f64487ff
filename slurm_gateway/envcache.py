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
loop and within a time limit, and no identity means a full check. A hung file system (an
environment on a dead NFS server) cannot tie up the gateway for others: the stats run in a
small pool of their own, never queued (a full check instead while it is busy), one at a time
per path and per user, and a path whose stat still hangs is not stat'ed again; a helper
that does not answer in time is ended (``transport``: SIGTERM, SIGKILL, reaped), and the
user is not asked again for :data:`HUNG_BACKOFF` seconds.
Not seen: packages an environment reaches outside its prefix (a ``.pth`` file naming
another directory, system site-packages); their changes wait for ``env_check_max_age``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from .envcheck import Identity, identity_from_json, stat_identity

#: Seconds the gateway waits for an environment's identity before checking it in full.
IDENTITY_TIMEOUT = 2.0
#: Seconds during which a user whose ``env-id`` helper did not answer in time is not asked
#: again (her requests are checked in full): a hung file system would leave one helper
#: behind per request otherwise.
HUNG_BACKOFF = 60.0

#: Threads that stat environments: a hung file system ties up these, nothing else of the
#: gateway's (their reads time out and the request is checked in full).
STAT_THREADS = 4
_stat_pool = ThreadPoolExecutor(STAT_THREADS, thread_name_prefix="env-identity")
_stats_lock = threading.Lock()
_stats: dict[str, str] = {}  # prefix -> user, for the stats running (maybe hung) now
_helpers_busy: dict[str, float] = {}  # user -> until when her helper is not asked again

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
    prefix: str,
    as_the_user: Callable[[], Awaitable[object]],
    timeout: float = IDENTITY_TIMEOUT,
    user: str = "",
) -> Identity | None:
    """The identity of ``prefix`` for ``user``: stat by the gateway in a thread of its own
    pool, or if it may not look, ``as_the_user()`` (the user helper's ``env-id`` answer,
    None if it has none); None if neither answers within ``timeout`` seconds (a hung file
    system), or while a stat of the path or of the user's still runs, or the pool is busy:
    then the request is checked in full."""

    async def read() -> Identity | None:
        stat = _start_stat(prefix, user)
        if stat is None:
            return None
        try:
            return await asyncio.wrap_future(stat)
        except PermissionError:
            pass
        now = time.monotonic()
        if _helpers_busy.get(user, now) > now:
            return None
        if len(_helpers_busy) > 1024:
            for name in [name for name, until in _helpers_busy.items() if until <= now]:
                del _helpers_busy[name]
        _helpers_busy[user] = now + HUNG_BACKOFF
        try:
            # Cancelled at the timeout: the helper is ended, and the user is not asked
            # again for HUNG_BACKOFF seconds.
            answer = await as_the_user()
        except Exception:
            _helpers_busy.pop(user, None)
            raise
        _helpers_busy.pop(user, None)
        return identity_from_json(answer)

    try:
        return await asyncio.wait_for(read(), timeout)
    except (TimeoutError, OSError):
        return None


def _start_stat(prefix: str, user: str) -> Future | None:
    """The stat of ``prefix`` for ``user`` started in the pool, or None (not queued) while
    one of that path or that user still runs, or every thread is taken."""
    with _stats_lock:
        if prefix in _stats or user in _stats.values() or len(_stats) >= STAT_THREADS:
            return None
        _stats[prefix] = user
    stat = _stat_pool.submit(stat_identity, prefix)
    stat.add_done_callback(lambda _: _stat_done(prefix))
    return stat


def _stat_done(prefix: str) -> None:
    with _stats_lock:
        _stats.pop(prefix, None)
