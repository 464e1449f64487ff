"""The one record of whether SLURM and accounting answer (availability.py): /api/health
and the metrics' slurm_up/accounting_up both read it, so they cannot disagree."""

from __future__ import annotations

import asyncio
import logging

import sqlalchemy as sa

from slurm_gateway.availability import (
    MAX_DETAIL_CHARS,
    Availability,
    Observation,
    hanging_for,
    is_up,
    log_line,
)
from slurm_gateway.health import FAIL, HealthMonitor, slurm_check
from slurm_gateway.metrics import GatewayMetrics, StateCollector
from slurm_gateway.tracker import JobTracker
from slurm_gateway.transport import CommandResult


def test_slurm_is_down_while_a_command_hangs_on_it_though_its_last_answer_was_good():
    good = Observation(True, "answered", 0.0)
    assert hanging_for(None, 100.0, 5) is None
    assert hanging_for(1.0, 10.0, 5) is None  # 9 s: under the 15 s bound
    assert hanging_for(1.0, 17.0, 5) == 16.0
    assert hanging_for(1.0, 17.0, 10) is None  # bound: two poll periods, 20 s
    assert is_up("slurm", good, 1.0, 10.0, 5) is True
    assert is_up("slurm", good, 1.0, 17.0, 5) is False
    assert is_up("accounting", good, 1.0, 17.0, 5) is True  # a hang is slurmctld's
    assert is_up("slurm", None, None, 17.0, 5) is None


def test_health_fails_slurm_exactly_when_the_metrics_say_it_is_down():
    cases = [
        (seen, pending, now)
        for seen in (None, Observation(True, "", 0.0), Observation(False, "", 0.0))
        for pending in (None, 0.0, 5.0)
        for now in (1.0, 14.0, 16.0, 60.0, 200.0)
    ]
    for seen, pending, now in cases:
        failing = slurm_check(seen, pending, now, 5).status == FAIL
        assert failing == (is_up("slurm", seen, pending, now, 5) is False), (seen, pending, now)


def test_a_still_failing_part_is_logged_again_at_most_every_5_minutes():
    down = Observation(False, "x", 0.0)
    assert log_line("proxy", None, False, "refused", None, 0) == "Health: proxy fails: refused"
    assert (
        log_line("proxy", Observation(True, "", 0), False, "r", 9, 10) == "Health: proxy fails: r"
    )
    assert log_line("proxy", down, False, "refused", 0, 299) is None
    assert log_line("proxy", down, False, "refused", 0, 300) == (
        "Health: proxy still fails: refused"
    )
    assert log_line("proxy", down, True, "answers", 0, 1) == "Health: proxy answers again"
    assert log_line("proxy", None, True, "answers", None, 1) is None
    assert log_line("proxy", Observation(True, "", 0), True, "answers", None, 1) is None


def test_a_detail_is_kept_and_logged_bounded(caplog):
    parts = Availability(5, logging.getLogger("test"))
    with caplog.at_level(logging.INFO, logger="test"):
        parts.note("slurm", False, "x" * 100_000)
    assert len(parts.seen["slurm"].detail) == MAX_DETAIL_CHARS
    assert max(len(r.getMessage()) for r in caplog.records) < MAX_DETAIL_CHARS + 40


def test_a_hanging_command_counts_while_under_way_only():
    parts = Availability(5, logging.getLogger("test"))
    parts.note("slurm", True, "answered")
    with parts.waiting_on_slurm():
        since = parts.pending_since()
        assert parts.slurm_busy and since is not None
        assert parts.up("slurm", since + 10) is True
        assert parts.up("slurm", since + 16) is False
    assert not parts.slurm_busy and parts.up("slurm", since + 16) is True


class _Slurm:
    def __init__(self):
        self.up = True

    async def run(self, argv, **kwargs):
        return CommandResult(list(argv), 0 if self.up else 1, "", "" if self.up else "down")


def _gauges(metrics: GatewayMetrics) -> dict[str, float]:
    return {
        s.name: s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name.endswith("_up")
    }


def test_the_tracker_polling_moves_health_and_the_metrics_together(tmp_path):
    slurm = _Slurm()
    monitor = HealthMonitor(
        slurm.run,
        scontrol="scontrol",
        squeue="squeue",
        sacct="sacct",
        period=5,
        proxy_url="http://127.0.0.1:1/",
        gateway_url="http://127.0.0.1:1/",
        engine=sa.create_engine(f"sqlite:///{tmp_path}/db.sqlite"),
        log=logging.getLogger("test"),
    )
    tracker = JobTracker(monitor.observing(slurm.run))
    tracker.track("7")
    metrics = GatewayMetrics(process_metrics=False)
    metrics.add_state(StateCollector(list, monitor.parts.slurm_parts, False))

    def both():
        body = asyncio.run(monitor.report())
        return body["checks"]["slurm"]["status"], _gauges(metrics).get("slurm_gateway_slurm_up")

    assert both() == ("warn", None)  # not heard of yet: no gauge
    asyncio.run(tracker.poll())
    assert both() == ("pass", 1.0)
    slurm.up = False
    asyncio.run(tracker.poll())
    assert both() == ("fail", 0.0)
    assert not hasattr(tracker, "slurm_available")  # no second record to disagree
    slurm.up = True
    asyncio.run(tracker.poll())
    assert both() == ("pass", 1.0)
