"""Which requests have their bodies checked before dask-gateway-server's routes see them."""

import pytest

from slurm_gateway.api import is_refused_action, is_wait_for, request_action


@pytest.mark.parametrize(
    ("method", "path", "has_cluster_name", "action"),
    [
        ("POST", "/api/v1/clusters", False, "create"),
        ("POST", "/api/v1/clusters/", False, "create"),
        ("POST", "/services/dask-gateway/api/v1/clusters", False, "create"),  # behind a prefix
        ("POST", "/api/v1/clusters/c0ffee/scale", True, "scale"),
        ("POST", "/api/v1/clusters/c0ffee/scale/", True, "scale"),
        ("POST", "/api/v1/clusters/c0ffee/adapt", True, "adapt"),
        ("POST", "/api/v1/clusters/c0ffee/adapt/", True, "adapt"),
        # Not a checked request.
        ("GET", "/api/v1/clusters", False, None),
        ("GET", "/api/v1/clusters/c0ffee/scale", True, None),
        ("DELETE", "/api/v1/clusters/c0ffee", True, None),
        ("PUT", "/api/v1/clusters", False, None),
        ("post", "/api/v1/clusters", False, None),  # aiohttp's methods are upper case
        ("POST", "/api/v1/clusters/c0ffee", True, None),
        ("POST", "/api/v1/clusters/c0ffee/heartbeat", True, None),
        ("POST", "/api/v1/clusters/c0ffee/addresses", True, None),
        ("POST", "/api/v1/clusters/c0ffee/scale", False, None),  # no cluster_name route
        ("POST", "/api/v1/clusters/c0ffee/adapt", False, None),
        ("POST", "/api/v1/options", False, None),
    ],
)
def test_request_action(method, path, has_cluster_name, action):
    assert request_action(method, path, has_cluster_name) == action


@pytest.mark.parametrize(
    ("method", "path", "status", "refused"),
    [
        ("POST", "/api/v1/clusters/c0ffee/scale", 409, True),
        ("POST", "/services/dask-gateway/api/v1/clusters/c0ffee/adapt/", 409, True),
        ("POST", "/api/v1/clusters/c0ffee/scale", 200, False),  # it ran
        ("POST", "/api/v1/clusters/c0ffee/scale", 403, False),  # not the user's cluster
        ("POST", "/api/v1/clusters/f00d/scale", 409, False),  # another cluster's path
        ("POST", "/api/v1/clusters/c0ffee/heartbeat", 409, False),
        ("GET", "/api/v1/clusters/c0ffee/scale", 409, False),
    ],
)
def test_a_refused_scale_or_adapt_of_a_failed_cluster_gets_its_failure(
    method, path, status, refused
):
    # (the admins' reason for stopping it, or SLURM's facts)
    assert is_refused_action(method, path, "c0ffee", status) is refused


def test_only_a_successful_wait_gets_the_failure():
    assert is_wait_for("GET", "/api/v1/clusters/c0ffee", {"wait": ""}, "c0ffee", 200)
    assert not is_wait_for("GET", "/api/v1/clusters/c0ffee", {}, "c0ffee", 200)
    assert not is_wait_for("GET", "/api/v1/clusters/c0ffee", {"wait": ""}, "c0ffee", 403)
