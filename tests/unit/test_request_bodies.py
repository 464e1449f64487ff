"""Request bodies the stock routes would answer with 500 or pass on to the scheduler."""

import math

import pytest

from slurm_gateway.user_options import request_body_problem


@pytest.mark.parametrize("count", [-1, True, 1.5, "4; id", None, math.nan])
def test_bad_scale_counts_are_refused(count):
    assert "non-negative integer" in request_body_problem("scale", {"count": count})


def test_good_requests_pass():
    assert request_body_problem("scale", {"count": 0}) is None
    assert request_body_problem("adapt", {"minimum": 1, "maximum": 3, "active": True}) is None
    assert request_body_problem("adapt", {"minimum": None, "maximum": None}) is None


@pytest.mark.parametrize(
    "body, words",
    [
        ({"minimum": 5, "maximum": 2}, "must not exceed maximum"),
        ({"minimum": -1, "maximum": 2}, "minimum must be"),
        ({"minimum": 1, "maximum": "x"}, "maximum must be"),
        ({"minimum": 1, "maximum": 2, "active": "yes"}, "active"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_adapt_requests_are_refused(body, words):
    assert words in request_body_problem("adapt", body)


@pytest.mark.parametrize(
    "body, words",
    [
        (None, "create expects a JSON object"),
        ([], "create expects a JSON object"),
        ({"cluster_options": [1]}, "cluster_options must be a JSON object"),
        ({"cluster_options": "x"}, "cluster_options must be a JSON object"),
    ],
)
def test_create_requests_stock_routes_would_answer_with_500_are_refused(body, words):
    assert words in request_body_problem("create", body)
    assert request_body_problem("create", {"cluster_options": {"worker_cores": 1}}) is None
    assert request_body_problem("create", {}) is None
