"""Which requests have their bodies checked before dask-gateway-server's routes see them."""

import pytest

from slurm_gateway.api import request_action


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
