"""scale/adapt request bodies the stock routes would pass on to the scheduler."""

import math

import pytest

from slurm_gateway.options import scale_request_problem


@pytest.mark.parametrize("count", [-1, True, 1.5, "4; id", None, math.nan])
def test_bad_scale_counts_are_refused(count):
    assert "non-negative integer" in scale_request_problem("scale", {"count": count})


def test_good_requests_pass():
    assert scale_request_problem("scale", {"count": 0}) is None
    assert scale_request_problem("adapt", {"minimum": 1, "maximum": 3, "active": True}) is None
    assert scale_request_problem("adapt", {"minimum": None, "maximum": None}) is None


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
    assert words in scale_request_problem("adapt", body)
