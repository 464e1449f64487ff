"""When SLURM is asked about which jobs: queued ones every pending period, suspected ones at
once and at the follow-ups, every job at the sweep; running jobs nobody suspects never."""

from slurm_gateway.poll_plan import (
    COMPLETING_PERIOD,
    FOLLOW_UPS,
    MIN_ROUND_GAP,
    OVERDUE_PERIODS,
    SUSPICION_COOLDOWN,
    USER_BURST,
    FollowUpBudget,
    Overdue,
    PollPeriods,
    PollPlan,
    awaits_start,
    overdue_heartbeats,
)
from slurm_gateway.slurm import JobInfo

PERIODS = PollPeriods(pending=5, sweep=120)
RUNNING = {"1": JobInfo("1", state="RUNNING"), "2": JobInfo("2", state="RUNNING")}


def test_idle_running_jobs_are_asked_about_only_at_the_sweep():
    plan = PollPlan(PERIODS, now=0)
    asked = [plan.next_round(t, RUNNING).job_ids for t in range(0, 120, 5)]
    assert all(ids == [] for ids in asked)
    assert plan.wake_at(RUNNING) == 120
    assert plan.next_round(120, RUNNING).job_ids is None  # every job
    assert plan.next_round(121, RUNNING).job_ids == []


def test_queued_jobs_are_asked_about_every_pending_period_until_they_run():
    jobs = {**RUNNING, "3": JobInfo("3"), "4": JobInfo("4", state="PENDING")}
    plan = PollPlan(PERIODS, now=0)
    assert plan.wake_at(jobs) == 5
    assert plan.next_round(4, jobs).job_ids == []
    assert plan.next_round(5, jobs).job_ids == ["3", "4"]
    assert plan.next_round(6, jobs).job_ids == []
    assert plan.next_round(10, RUNNING).job_ids == []  # they run now
    assert plan.wake_at(RUNNING) == 120


def test_held_jobs_are_asked_about_only_at_the_sweep():
    held = {
        "3": JobInfo("3", state="PENDING", reason="JobHeldUser"),
        "4": JobInfo("4", state="PENDING", reason="JobHeldAdmin"),
    }
    plan = PollPlan(PERIODS, now=0)
    assert plan.wake_at(held) == 120
    assert [plan.next_round(t, held).job_ids for t in range(0, 120, 5)] == [[]] * 24
    assert plan.next_round(120, held).job_ids is None  # every job
    released = {**held, "3": JobInfo("3", state="PENDING", reason="Priority")}
    assert plan.wake_at(released) == 125
    assert plan.next_round(125, released).job_ids == ["3"]


def test_only_queued_jobs_that_are_not_held_await_their_start():
    assert awaits_start(JobInfo("1"))  # just submitted: SLURM has not been asked yet
    assert awaits_start(JobInfo("1", state="PENDING", reason="Resources"))
    assert not awaits_start(JobInfo("1", state="PENDING", reason="JobHeldUser"))
    assert not awaits_start(JobInfo("1", state="RUNNING"))


def test_a_suspected_job_is_asked_about_at_once_then_at_the_follow_ups():
    plan = PollPlan(PERIODS, now=0)
    plan.suspect(["2"], now=10)
    asked = []
    for tenth in range(100, 200):
        now = tenth / 10
        if plan.wake_at(RUNNING) <= now:
            asked.append((now, plan.next_round(now, RUNNING).job_ids))
    assert asked == [(10 + delay, ["2"]) for delay in FOLLOW_UPS]


def test_a_suspected_job_is_no_longer_asked_about_once_seen_ended():
    plan = PollPlan(PERIODS, now=0)
    plan.suspect(["1"], now=0)
    assert plan.next_round(0, RUNNING).job_ids == ["1"]
    ended = {**RUNNING, "1": JobInfo("1", state="CANCELLED")}
    assert plan.next_round(1, ended).job_ids == []
    assert plan.wake_at(ended) == 120


def test_a_job_still_completing_after_the_follow_ups_is_asked_about_every_two_seconds():
    completing = {"1": JobInfo("1", state="COMPLETING")}
    plan = PollPlan(PERIODS, now=0)
    plan.suspect(["1"], now=0)
    for delay in FOLLOW_UPS:
        assert plan.next_round(delay, completing).job_ids == ["1"]
    last = FOLLOW_UPS[-1]
    assert plan.wake_at(completing) == last + COMPLETING_PERIOD
    assert plan.next_round(last + COMPLETING_PERIOD, completing).job_ids == ["1"]


def test_forgotten_jobs_are_not_followed_up():
    plan = PollPlan(PERIODS, now=0)
    plan.suspect(["1", "2"], now=0)
    plan.forget(["1"])
    assert plan.next_round(0, RUNNING).job_ids == ["2"]


def test_a_job_suspected_again_soon_is_not_asked_about_again():
    plan = PollPlan(PERIODS, now=0)
    plan.suspect(["1"], now=0)
    for delay in FOLLOW_UPS:
        assert plan.next_round(delay, RUNNING).job_ids == ["1"]
    plan.suspect(["1"], now=10)  # still running: e.g. a report forged by its own user
    assert plan.next_round(10, RUNNING).job_ids == []
    plan.suspect(["1"], now=SUSPICION_COOLDOWN)
    assert plan.next_round(SUSPICION_COOLDOWN, RUNNING).job_ids == ["1"]


def test_an_end_report_is_asked_about_at_once_even_soon_after_the_submission():
    plan = PollPlan(PERIODS, now=0)
    plan.suspect(["1"], now=0)  # just submitted
    for delay in FOLLOW_UPS[:2]:
        assert plan.next_round(delay, RUNNING).job_ids == ["1"]
    plan.reported("1", now=2.5)  # its scheduler was scancelled: the job says it ends
    assert plan.wake_at(RUNNING) == 2.5
    assert plan.next_round(2.5, RUNNING).job_ids == ["1"]
    assert plan.wake_at(RUNNING) == 2.5 + FOLLOW_UPS[1]


def test_a_job_that_reports_its_end_again_is_not_asked_about_again():
    plan = PollPlan(PERIODS, now=0)
    plan.reported("1", now=0)
    for delay in FOLLOW_UPS:
        assert plan.next_round(delay, RUNNING).job_ids == ["1"]
    # the same job reporting again (e.g. forged by its user): not logged, not asked about
    assert plan.reported("1", now=10) is False
    assert plan.next_round(10, RUNNING).job_ids == []
    plan.forget(["1"])
    assert plan.reported("1", now=11) is True  # (only a job id the gateway tracks again)
    assert plan.next_round(11, RUNNING).job_ids == ["1"]


def test_a_scheduler_whose_heartbeat_is_overdue_is_suspected_and_the_next_one_awaited():
    # Heartbeats every 10 s: overdue after 15 s without one.
    heard = {"1": 100.0, "2": 110.0}
    assert overdue_heartbeats(heard, 114.0, 10) == Overdue([], 115.0)
    assert overdue_heartbeats(heard, 115.0, 10) == Overdue(["1"], 125.0)
    assert overdue_heartbeats(heard, 200.0, 10) == Overdue(["1", "2"], None)
    assert overdue_heartbeats({}, 200.0, 10) == Overdue([], None)
    assert OVERDUE_PERIODS * 15 < 2 * 15  # before the stock heartbeat timeout's default


def test_a_job_just_submitted_can_be_suspected_at_once_after():
    plan = PollPlan(PERIODS, now=0)
    plan.submitted(["1"], 0)
    assert plan.next_round(0, RUNNING).job_ids == ["1"]
    assert plan.suspect(["1"], 2) == ["1"]  # e.g. its heartbeat overdue, 2 s after
    assert plan.next_round(2, RUNNING).job_ids == ["1"]
    assert plan.suspect(["1"], 3) == []  # within the cooldown of that suspicion


def rounds(plan: PollPlan, jobs: dict, until: float, arrivals: dict[float, list]) -> list:
    """The rounds that ask something, as the watch loop runs them until ``until``; at
    each time of ``arrivals``, its ``(job_id, user)`` end reports arrive first."""
    asked, now, pending = [], 0.0, sorted(arrivals.items())
    while now < until:
        while pending and pending[0][0] <= now:
            for job_id, user in pending.pop(0)[1]:
                plan.reported(job_id, now, user)
        ids = plan.next_round(now, jobs).job_ids
        if ids is None or ids:
            asked.append((round(now, 3), ids))
        wake = plan.wake_at(jobs)
        if pending:
            wake = min(wake, pending[0][0])
        now = max(wake, now + 0.001)
    return asked


def test_a_flood_of_one_users_reports_asks_slurm_a_bounded_number_of_times():
    # mallory's cluster reports 400 of its jobs ending, one every 25 ms, none true.
    jobs = {str(n): JobInfo(str(n), state="RUNNING") for n in range(400)}
    flood = {n * 0.025: [(str(n), "mallory")] for n in range(400)}
    asked = rounds(PollPlan(PERIODS, now=0), jobs, until=60, arrivals=flood)
    assert asked[0] == (0, ["0"])  # the first report is asked about at once
    # Unbounded, that is a round per report and per follow-up (1600 squeue calls); within
    # her budget, a few a second while it lasts (10 s), then the follow-ups' tail.
    assert len(asked) <= 40, len(asked)
    assert all(b - a >= MIN_ROUND_GAP for (a, _), (b, _) in zip(asked, asked[1:], strict=False))
    assert {j for _, ids in asked for j in ids} == set(jobs)  # and every report is asked about


def test_a_genuine_report_is_asked_about_at_once_while_another_user_floods():
    jobs = {str(n): JobInfo(str(n), state="RUNNING") for n in range(401)}
    flood = {n * 0.025: [(str(n), "mallory")] for n in range(400)}
    flood[5.0] = [*flood.get(5.0, []), ("400", "alice")]  # alice's scheduler is scancelled
    asked = rounds(PollPlan(PERIODS, now=0), jobs, until=20, arrivals=flood)
    first = min(t for t, ids in asked if "400" in ids)
    assert 5.0 <= first <= 5.0 + MIN_ROUND_GAP, asked


def test_a_users_budget_starts_a_burst_at_once_then_one_series_per_interval():
    budget = FollowUpBudget(burst=USER_BURST, interval=2.0)
    assert [budget.start_at("mallory", 0) for _ in range(USER_BURST)] == [0] * USER_BURST
    assert budget.start_at("mallory", 0) == 2.0  # waits, and later ones join it
    assert budget.start_at("mallory", 1.5) == 2.0
    assert budget.start_at("mallory", 2.5) == 4.0
    assert budget.start_at("alice", 2.5) == 2.5  # another user's budget is her own
    assert budget.start_at("mallory", 100) == 100  # refilled
