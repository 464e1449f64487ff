"""Per-user limits: a clear refusal naming the limit, and workers cut to what is left."""

import pytest

from slurm_gateway.limits import UserLimits, admit, workers_allowed

GiB = 2**30
CONFIG = {
    "scheduler_cores": 1,
    "scheduler_memory": GiB,
    "worker_cores": 2,
    "worker_memory": 4 * GiB,
}


def test_no_limits_admit_anything():
    assert admit(UserLimits(), [(CONFIG, 100)] * 5, CONFIG) is None


def test_cluster_count_limit_names_the_limit():
    with pytest.raises(ValueError, match="limit per user is 2"):
        admit(UserLimits(max_clusters=2), [(CONFIG, 0), (CONFIG, 0)], CONFIG)
    assert admit(UserLimits(max_clusters=2), [(CONFIG, 0)], CONFIG) is None


def test_cores_and_memory_left_bound_the_new_clusters_workers():
    # 1 cluster with 3 workers uses 1 + 3*2 = 7 cores and 1 + 3*4 = 13 GiB
    limits = UserLimits(max_cores=16, max_memory=32 * GiB)
    # cores left for workers: 16 - 7 - 1 = 8 -> 4 workers; memory: 32 - 13 - 1 = 18 -> 4
    assert admit(limits, [(CONFIG, 3)], CONFIG) == 4
    assert admit(UserLimits(max_cores=16, max_memory=20 * GiB), [(CONFIG, 3)], CONFIG) == 1


def test_no_room_for_even_a_scheduler_is_refused():
    with pytest.raises(ValueError, match="limit per user is 7 cores"):
        admit(UserLimits(max_cores=7), [(CONFIG, 3)], CONFIG)
    with pytest.raises(ValueError, match="limit per user is 13"):
        admit(UserLimits(max_memory=13 * GiB), [(CONFIG, 3)], CONFIG)


def test_workers_per_user_are_shared_by_the_users_clusters():
    limits = UserLimits(max_workers=10)
    assert admit(limits, [(CONFIG, 4), (CONFIG, 3)], CONFIG) == 3
    assert admit(limits, [(CONFIG, 12)], CONFIG) == 0


def test_a_running_cluster_gets_what_the_others_leave():
    limits = UserLimits(max_clusters=1, max_cores=16, max_workers=100)
    # the cluster limit does not apply to a cluster that exists; cores: 16 - 7 - 1 = 8 -> 4
    assert workers_allowed(limits, [(CONFIG, 3)], CONFIG) == 4
    assert workers_allowed(UserLimits(max_cores=7), [(CONFIG, 3)], CONFIG) == 0
    assert workers_allowed(UserLimits(), [(CONFIG, 3)], CONFIG) is None
