"""Admitting clusters: a user's limits cut a new cluster's workers, clusters still being
checked count against them, and only so many of her requests are checked at once."""

from contextlib import ExitStack

import pytest

from slurm_gateway.admission import (
    Admissions,
    TooManyChecks,
    admitted_max_workers,
    capped_worker_count,
)
from slurm_gateway.limits import UserLimits

GIB = 2**30


def _config(max_workers=1000, **overrides):
    config = {
        "scheduler_cores": 1,
        "scheduler_memory": 2 * GIB,
        "worker_cores": 2,
        "worker_memory": 4 * GIB,
        "cluster_max_workers": max_workers,
    }
    config.update(overrides)
    return config


def test_no_limits_keep_the_clusters_own_maximum():
    assert admitted_max_workers(UserLimits(), [(_config(), 50)], _config(7)) == 7
    assert admitted_max_workers(UserLimits(), [], _config(None)) is None


def test_maximum_cut_to_the_workers_left():
    limits = UserLimits(max_workers=10)
    assert admitted_max_workers(limits, [(_config(), 4)], _config()) == 6


def test_maximum_cut_to_the_cores_left():
    # 20 cores: 1 + 3 * 2 used, a new scheduler takes 1, leaving 12 cores, 6 workers.
    limits = UserLimits(max_cores=20)
    assert admitted_max_workers(limits, [(_config(), 3)], _config()) == 6


def test_maximum_cut_to_the_memory_left():
    # 20 GiB: a new scheduler takes 2, leaving 18 GiB, 4 workers of 4 GiB.
    assert admitted_max_workers(UserLimits(max_memory=20 * GIB), [], _config()) == 4


def test_own_smaller_maximum_is_kept():
    limits = UserLimits(max_workers=10)
    assert admitted_max_workers(limits, [(_config(), 4)], _config(3)) == 3


def test_unlimited_cluster_gets_the_users_limit():
    assert admitted_max_workers(UserLimits(max_workers=10), [], _config(None)) == 10


@pytest.mark.parametrize(
    ("limits", "active", "words"),
    [
        (UserLimits(max_clusters=2), [(_config(), 0)] * 2, "limit per user is 2"),
        (UserLimits(max_cores=4), [(_config(), 2)], "limit per user is 4 cores"),
        (UserLimits(max_memory=6 * GIB), [(_config(), 1)], "limit per user is 6"),
    ],
)
def test_refusal_names_the_limit(limits, active, words):
    with pytest.raises(ValueError, match=words):
        admitted_max_workers(limits, active, _config())


LIMITS = UserLimits(max_workers=10)
OTHERS = [(_config(), 4)]  # 6 workers left


@pytest.mark.parametrize("requested", ["3", -1, True, None, 2.5, [3]])
def test_bad_counts_keep_the_current_count(requested):
    assert capped_worker_count(LIMITS, OTHERS, _config(), requested, 2) == 2


@pytest.mark.parametrize(("requested", "allowed"), [(0, 0), (3, 3), (6, 6), (7, 6), (10**7, 6)])
def test_count_cut_to_what_is_left(requested, allowed):
    assert capped_worker_count(LIMITS, OTHERS, _config(), requested, 2) == allowed


def test_bad_count_with_current_above_the_limit_is_cut_too():
    assert capped_worker_count(LIMITS, OTHERS, _config(), "3", 9) == 6


def test_no_limits_take_the_requested_count():
    assert capped_worker_count(UserLimits(), OTHERS, _config(), 10**5, 2) == 10**5


def test_others_using_everything_leave_no_worker():
    limits = UserLimits(max_cores=5)
    assert capped_worker_count(limits, [(_config(), 2)], _config(), 4, 1) == 0


def test_reservation_counts_while_inside_only():
    admissions = Admissions(max_checking=2)
    config = _config()
    assert admissions.reserved("alice") == []
    with admissions.reservation("alice", config):
        assert admissions.reserved("alice") == [(config, 0)]
        assert admissions.reserved("bob") == []
        with admissions.reservation("alice", config):
            assert len(admissions.reserved("alice")) == 2
        assert admissions.reserved("alice") == [(config, 0)]
    assert admissions.reserved("alice") == []


def test_reservation_released_after_an_exception():
    admissions = Admissions(max_checking=2)
    with pytest.raises(RuntimeError), admissions.reservation("alice", _config()):
        raise RuntimeError("check failed")
    assert admissions.reserved("alice") == []


def test_reservation_counts_against_the_cluster_limit():
    # Two concurrent requests with one cluster left: the second is refused.
    admissions = Admissions(max_checking=5)
    limits = UserLimits(max_clusters=1)
    assert admitted_max_workers(limits, admissions.reserved("alice"), _config()) == 1000
    with admissions.reservation("alice", _config()):
        with pytest.raises(ValueError, match="limit per user is 1"):
            admitted_max_workers(limits, admissions.reserved("alice"), _config())
        assert admitted_max_workers(limits, admissions.reserved("bob"), _config()) == 1000
    assert admitted_max_workers(limits, admissions.reserved("alice"), _config()) == 1000


def test_checking_refuses_one_more_than_the_limit():
    admissions = Admissions(max_checking=2)
    with ExitStack() as stack:
        stack.enter_context(admissions.checking("alice"))
        stack.enter_context(admissions.checking("alice"))
        with pytest.raises(TooManyChecks, match="limit per user is 2"):
            stack.enter_context(admissions.checking("alice"))
        with admissions.checking("bob"):  # per user
            pass
    # All released, the refused one included: two fit again, not three.
    with ExitStack() as stack:
        stack.enter_context(admissions.checking("alice"))
        stack.enter_context(admissions.checking("alice"))
        with pytest.raises(TooManyChecks):
            stack.enter_context(admissions.checking("alice"))


def test_checking_released_after_an_exception():
    admissions = Admissions(max_checking=1)
    for _ in range(3):
        with pytest.raises(RuntimeError), admissions.checking("alice"):
            raise RuntimeError("environment check failed")
    with admissions.checking("alice"):
        with pytest.raises(TooManyChecks):
            with admissions.checking("alice"):
                pass
