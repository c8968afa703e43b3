"""The tier rules at their edges, as a pure function (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from services.common.settings import Settings
from services.leaders.tiers import Metrics, decide, meets_bar

ST = Settings()
NOW = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def standard_ready(**over) -> Metrics:
    base = dict(
        gmv_fen=ST.bar_standard_gmv_fen,
        buyers=ST.bar_standard_buyers,
        orders=1000,
        upheld_complaints=0,
        trainings=ST.bar_standard_trainings,
        onboarding_done=True,
        deposit_paid=True,
    )
    return Metrics(**(base | over))


def advanced_ready(**over) -> Metrics:
    base = dict(gmv_fen=ST.bar_advanced_gmv_fen, buyers=ST.bar_advanced_buyers, orders=1000)
    return Metrics(**(base | over))


def run(tier, m, *, since=None, leader_since=NOW - 5 * DAY, now=NOW):
    return decide(
        tier=tier, metrics=m, leader_since=leader_since, below_bar_since=since, now=now, st=ST
    )


def test_the_bars_are_the_domain_defaults():
    assert ST.bar_standard_gmv_fen == 30_000 * 100 and ST.bar_advanced_gmv_fen == 80_000 * 100
    assert (ST.bar_standard_buyers, ST.bar_advanced_buyers) == (50, 150)
    assert ST.bar_standard_complaint_rate == Decimal("0.01")
    assert ST.bar_advanced_complaint_rate == Decimal("0.005")
    assert (ST.bar_standard_trainings, ST.bar_preparation_completed_orders) == (4, 10)


def test_preparation_needs_onboarding_deposit_and_ten_completed_orders():
    ready = Metrics(completed_orders=10, onboarding_done=True, deposit_paid=True)
    assert run("preparation", ready).tier == "standard"
    assert (
        run(
            "preparation", Metrics(completed_orders=9, onboarding_done=True, deposit_paid=True)
        ).tier
        == "preparation"
    )
    assert (
        run(
            "preparation", Metrics(completed_orders=10, onboarding_done=False, deposit_paid=True)
        ).tier
        == "preparation"
    )
    assert (
        run(
            "preparation", Metrics(completed_orders=10, onboarding_done=True, deposit_paid=False)
        ).tier
        == "preparation"
    )


def test_standard_gmv_one_fen_below_and_at_the_bar():
    assert run("standard", standard_ready(gmv_fen=ST.bar_standard_gmv_fen - 1)).tier == "standard"
    d = run("standard", standard_ready())
    assert (d.tier, d.direction) == ("advanced", "promotion")


def test_standard_buyers_trainings_and_complaint_rate_edges():
    assert run("standard", standard_ready(buyers=49)).tier == "standard"
    assert run("standard", standard_ready(trainings=3)).tier == "standard"
    # 1% exactly is not "below 1%"
    assert run("standard", standard_ready(orders=100, upheld_complaints=1)).tier == "standard"
    assert run("standard", standard_ready(orders=101, upheld_complaints=1)).tier == "advanced"


def test_advanced_to_core_edges_and_one_tier_at_a_time():
    assert run("advanced", advanced_ready(gmv_fen=ST.bar_advanced_gmv_fen - 1)).tier == "advanced"
    assert run("advanced", advanced_ready(buyers=149)).tier == "advanced"
    assert run("advanced", advanced_ready(orders=200, upheld_complaints=1)).tier == "advanced"
    assert run("advanced", advanced_ready(orders=201, upheld_complaints=1)).tier == "core"
    # a standard leader with core-level numbers still moves only to advanced
    huge = standard_ready(gmv_fen=10**9, buyers=10_000)
    assert run("standard", huge).tier == "advanced"
    assert run("core", huge).direction is None


def test_demotion_needs_the_second_whole_period_below_the_bar():
    below = advanced_ready(gmv_fen=ST.bar_standard_gmv_fen - 1, buyers=60, trainings=4)
    first = run("advanced", below)
    assert (first.tier, first.direction, first.below_bar_since) == ("advanced", None, NOW)
    almost = run("advanced", below, since=NOW, now=NOW + 30 * DAY - timedelta(seconds=1))
    assert (almost.tier, almost.below_bar_since) == ("advanced", NOW)
    second = run("advanced", below, since=NOW, now=NOW + 30 * DAY)
    assert (second.tier, second.direction) == ("standard", "demotion")


def test_meeting_the_bar_again_clears_the_period_below():
    ok = standard_ready(buyers=60)  # the standard bar: what an advanced leader must keep
    d = run("advanced", ok, since=NOW - 20 * DAY)
    assert (d.tier, d.below_bar_since) == ("advanced", None)


def test_core_falls_to_advanced_and_standard_is_the_floor():
    d = run("core", advanced_ready(gmv_fen=0), since=NOW - 30 * DAY)
    assert (d.tier, d.direction) == ("advanced", "demotion")
    d = run("standard", Metrics(), since=NOW - 300 * DAY)
    assert (d.tier, d.direction, d.below_bar_since) == ("standard", None, None)


def test_trial_ends_on_day_thirty_unless_promoted():
    not_ready = Metrics(onboarding_done=True, deposit_paid=True, completed_orders=3)
    assert (
        run(
            "preparation", not_ready, leader_since=NOW - 30 * DAY + timedelta(seconds=1)
        ).suspend_reason
        is None
    )
    assert (
        run("preparation", not_ready, leader_since=NOW - 30 * DAY).suspend_reason == "trial_expired"
    )
    ready = Metrics(onboarding_done=True, deposit_paid=True, completed_orders=10)
    d = run("preparation", ready, leader_since=NOW - 30 * DAY)
    assert (d.tier, d.suspend_reason) == ("standard", None)


def test_three_upheld_complaints_suspend_and_block_promotion():
    assert (
        run("standard", standard_ready(upheld_complaints=2, orders=10_000)).suspend_reason is None
    )
    d = run("standard", standard_ready(upheld_complaints=3, orders=10_000))
    assert (d.tier, d.suspend_reason) == ("standard", "complaints")


def test_meets_bar_is_false_at_the_top():
    assert meets_bar("core", advanced_ready(), ST) is False
