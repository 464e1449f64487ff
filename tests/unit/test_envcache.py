"""Reusing a passed environment check (envcache.py): the decisions, and the identity of
real directories changing when the environment does."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from slurm_gateway import envcache
from slurm_gateway.envcache import STAT_THREADS, EnvCache, read_identity
from slurm_gateway.envcheck import identity_from_json, stat_identity

ID_A = ((1, 2, 3, 4, 5), None)
ID_B = ((1, 2, 3, 4, 6), None)


@pytest.fixture(autouse=True)
def _fresh_helpers():
    yield
    envcache._helpers_busy.clear()


def test_a_passed_check_is_reused_for_the_same_identity():
    cache = EnvCache(max_age=900)
    cache.passed("alice", "/env", ID_A, now=100)
    assert cache.is_known_good("alice", "/env", ID_A, now=200)


def test_another_user_or_prefix_is_a_miss():
    cache = EnvCache(max_age=900)
    cache.passed("alice", "/env", ID_A, now=100)
    assert not cache.is_known_good("bob", "/env", ID_A, now=200)
    assert not cache.is_known_good("alice", "/other", ID_A, now=200)


def test_a_changed_identity_is_a_miss_and_drops_the_entry():
    cache = EnvCache(max_age=900)
    cache.passed("alice", "/env", ID_A, now=100)
    assert not cache.is_known_good("alice", "/env", ID_B, now=200)
    assert cache.entries("alice") == []
    assert not cache.is_known_good("alice", "/env", ID_A, now=201)


def test_an_unknown_identity_is_a_miss_and_is_not_remembered():
    cache = EnvCache(max_age=900)
    cache.passed("alice", "/env", None, now=100)
    assert cache.entries("alice") == []
    cache.passed("alice", "/env", ID_A, now=100)
    assert not cache.is_known_good("alice", "/env", None, now=200)


def test_an_entry_expires_after_max_age():
    cache = EnvCache(max_age=900)
    cache.passed("alice", "/env", ID_A, now=100)
    assert cache.is_known_good("alice", "/env", ID_A, now=999)
    assert not cache.is_known_good("alice", "/env", ID_A, now=1000)
    assert cache.entries("alice") == []


def test_a_clock_going_backwards_is_a_miss():
    cache = EnvCache(max_age=900)
    cache.passed("alice", "/env", ID_A, now=100)
    assert not cache.is_known_good("alice", "/env", ID_A, now=99)


def test_max_age_zero_remembers_nothing():
    cache = EnvCache(max_age=0)
    cache.passed("alice", "/env", ID_A, now=100)
    assert not cache.is_known_good("alice", "/env", ID_A, now=100)


def test_at_most_max_per_user_entries_the_least_recently_checked_go_first():
    cache = EnvCache(max_age=900, max_per_user=16)
    for n in range(17):
        cache.passed("alice", f"/env{n}", ID_A, now=n)
    assert len(cache.entries("alice")) == 16
    assert not cache.is_known_good("alice", "/env0", ID_A, now=20)
    cache.passed("alice", "/env1", ID_A, now=21)  # checked again: now the newest
    cache.passed("alice", "/env17", ID_A, now=22)
    assert cache.entries("alice")[0] == "/env3"
    assert cache.is_known_good("alice", "/env1", ID_A, now=23)
    cache.passed("bob", "/env0", ID_A, now=23)  # the bound is per user
    assert len(cache.entries("alice")) == 16


def _venv(tmp_path):
    prefix = tmp_path / "env"
    site = prefix / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (prefix / "bin").mkdir()
    (prefix / "bin" / "python").write_text("")
    (prefix / "pyvenv.cfg").write_text("home = /usr/bin\n")
    return prefix, site


def test_the_identity_changes_when_a_package_is_installed_or_the_env_replaced(tmp_path):
    prefix, site = _venv(tmp_path)
    before = stat_identity(str(prefix))
    assert before is not None and before == stat_identity(str(prefix))
    (site / "dask-2026.9.0.dist-info").mkdir()
    installed = stat_identity(str(prefix))
    assert installed != before
    os.utime(site, ns=(before[4][3], before[4][3]))  # mtime set back: ctime still differs
    assert stat_identity(str(prefix)) not in (before, installed)
    (prefix / "conda-meta").mkdir()
    assert stat_identity(str(prefix))[2] is not None


def test_no_identity_without_prefix_or_python(tmp_path):
    assert stat_identity(str(tmp_path / "missing")) is None
    assert stat_identity(str(tmp_path)) is None


def test_identity_from_json_accepts_only_lists_of_int_lists_or_null():
    assert identity_from_json([[1, 2], None]) == ((1, 2), None)
    assert identity_from_json([[1, True]]) is None
    assert identity_from_json([["1"]]) is None
    assert identity_from_json({"a": 1}) is None


def test_read_identity_asks_the_user_only_if_the_gateway_may_not_look(tmp_path, monkeypatch):
    prefix, _ = _venv(tmp_path)
    asked = []

    async def as_the_user():
        asked.append(True)
        return [[7, 8]]

    assert asyncio.run(read_identity(str(prefix), as_the_user)) == stat_identity(str(prefix))
    assert asked == []

    def refused(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr("slurm_gateway.envcache.stat_identity", refused)
    assert asyncio.run(read_identity(str(prefix), as_the_user)) == ((7, 8),)


def test_read_identity_gives_none_when_it_takes_too_long(tmp_path, monkeypatch):
    async def slow():
        await asyncio.sleep(5)

    def refused(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr("slurm_gateway.envcache.stat_identity", refused)
    assert asyncio.run(read_identity(str(tmp_path), slow, timeout=0.1)) is None


@pytest.fixture
def hung_nfs(monkeypatch):
    """Stats of paths under /hung block until the test ends (a dead NFS server)."""
    released, stats = threading.Event(), []
    real = envcache.stat_identity

    def stat(path):
        stats.append(path)
        if path.startswith("/hung"):
            released.wait(30)
            return None
        return real(path)

    monkeypatch.setattr("slurm_gateway.envcache.stat_identity", stat)
    yield stats
    released.set()
    deadline = time.monotonic() + 5
    while envcache._stats and time.monotonic() < deadline:
        time.sleep(0.01)


async def _never_asked():
    raise AssertionError("the gateway may stat these")


def test_a_hung_file_system_does_not_tie_up_the_identity_reads_of_others(tmp_path, hung_nfs):
    prefix, _ = _venv(tmp_path)

    async def reads():
        # mallory asks about more environments on the dead server than there are threads.
        hung = [
            read_identity(f"/hung/env{n}", _never_asked, timeout=0.2, user="mallory")
            for n in range(2 * STAT_THREADS)
        ]
        assert await asyncio.gather(*hung) == [None] * (2 * STAT_THREADS)
        again = time.monotonic()
        assert await read_identity("/hung/env0", _never_asked, timeout=1, user="bob") is None
        not_waited = time.monotonic() - again
        return not_waited, await read_identity(str(prefix), _never_asked, 1, user="alice")

    not_waited, alices = asyncio.run(reads())
    assert alices == stat_identity(str(prefix))  # not queued behind hung threads
    assert not_waited < 0.1  # a path still hung is not stat'ed again: a full check at once
    assert [p for p in hung_nfs if p.startswith("/hung")] == ["/hung/env0"]  # one thread


def test_a_helper_that_does_not_answer_is_cancelled_and_not_asked_again_soon(monkeypatch):
    def refused(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr("slurm_gateway.envcache.stat_identity", refused)
    calls, ended = [], []

    async def hung_helper():
        calls.append(True)
        try:
            await asyncio.sleep(30)
        finally:
            ended.append(True)  # the runner ends its process when this is cancelled

    async def reads():
        first = await read_identity("/env", hung_helper, timeout=0.1, user="carol")
        second = await read_identity("/env", hung_helper, timeout=0.1, user="carol")
        return first, second

    assert asyncio.run(reads()) == (None, None)
    assert calls == [True] and ended == [True]
