"""The tier rules as pure functions (no I/O): what a leader's rolling-window metrics mean.

* Promotion: a leader who meets the bar of the tier they hold moves up one tier.
* Demotion: an advanced or core leader must keep meeting the bar that brought them there
  (the bar of the tier below). Below it at one evaluation starts a period; still below
  `demotion_periods - 1` whole windows later (two consecutive 30-day periods by
  default) drops them one tier. Standard is the floor.
* Trial: still in preparation `trial_days` after approval -> suspended for review.
* Complaints: `complaint_suspend_limit` upheld complaints in the window -> suspended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cached_property

from services.common.settings import Settings

from .models import TIER_ORDER, Tier


@dataclass(frozen=True)
class Metrics:
    gmv_fen: int = 0
    buyers: int = 0
    orders: int = 0
    completed_orders: int = 0
    upheld_complaints: int = 0
    trainings: int = 0
    onboarding_done: bool = False
    deposit_paid: bool = False

    @cached_property  # asked by every bar check of every leader in an evaluation
    def complaint_rate(self) -> Decimal:
        if self.orders == 0:
            return Decimal(0) if self.upheld_complaints == 0 else Decimal(1)
        return Decimal(self.upheld_complaints) / Decimal(self.orders)

    def as_dict(self) -> dict:
        # a plain copy of the fields: `asdict` deep-copies, and this runs for every leader
        out = {k: v for k, v in self.__dict__.items() if k != "complaint_rate"}
        out["complaint_rate"] = str(self.complaint_rate.quantize(Decimal("0.0001")))
        return out


@dataclass(slots=True)
class Check:
    """One requirement of a bar. Slots, not frozen: an evaluation of 50,000 leaders makes
    ~200,000 of them, and orjson writes a slotted dataclass as an object directly."""

    name: str
    value: int | str | bool
    required: int | str | bool
    met: bool

    def as_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "required": self.required, "met": self.met}


def bar_checks(tier: str, m: Metrics, st: Settings) -> list[Check]:
    """The requirements to be promoted out of `tier` (empty for the top tier)."""
    if tier == Tier.preparation:
        return [
            Check("onboarding_done", m.onboarding_done, True, m.onboarding_done),
            Check("deposit_paid", m.deposit_paid, True, m.deposit_paid),
            Check(
                "completed_orders",
                m.completed_orders,
                st.bar_preparation_completed_orders,
                m.completed_orders >= st.bar_preparation_completed_orders,
            ),
        ]
    if tier == Tier.standard:
        return [
            Check(
                "gmv_fen", m.gmv_fen, st.bar_standard_gmv_fen, m.gmv_fen >= st.bar_standard_gmv_fen
            ),
            Check("buyers", m.buyers, st.bar_standard_buyers, m.buyers >= st.bar_standard_buyers),
            Check(
                "complaint_rate_below",
                str(m.complaint_rate),
                str(st.bar_standard_complaint_rate),
                m.complaint_rate < st.bar_standard_complaint_rate,
            ),
            Check(
                "trainings",
                m.trainings,
                st.bar_standard_trainings,
                m.trainings >= st.bar_standard_trainings,
            ),
        ]
    if tier == Tier.advanced:
        return [
            Check(
                "gmv_fen", m.gmv_fen, st.bar_advanced_gmv_fen, m.gmv_fen >= st.bar_advanced_gmv_fen
            ),
            Check("buyers", m.buyers, st.bar_advanced_buyers, m.buyers >= st.bar_advanced_buyers),
            Check(
                "complaint_rate_below",
                str(m.complaint_rate),
                str(st.bar_advanced_complaint_rate),
                m.complaint_rate < st.bar_advanced_complaint_rate,
            ),
        ]
    return []


def meets_bar(tier: str, m: Metrics, st: Settings) -> bool:
    checks = bar_checks(tier, m, st)
    return bool(checks) and all(c.met for c in checks)


def next_tier(tier: str) -> str | None:
    i = TIER_ORDER.index(Tier(tier))
    return TIER_ORDER[i + 1].value if i + 1 < len(TIER_ORDER) else None


def previous_tier(tier: str) -> str | None:
    i = TIER_ORDER.index(Tier(tier))
    return TIER_ORDER[i - 1].value if i > 0 else None


@dataclass(frozen=True)
class Decision:
    tier: str  # the tier after this evaluation
    direction: str | None  # promotion | demotion | None
    below_bar_since: datetime | None
    suspend_reason: str | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        if self.direction:
            return self.direction
        if self.suspend_reason:
            return f"suspended:{self.suspend_reason}"
        return "below_bar" if self.below_bar_since else "unchanged"


def decide(
    *,
    tier: str,
    metrics: Metrics,
    leader_since: datetime,
    below_bar_since: datetime | None,
    now: datetime,
    st: Settings,
) -> Decision:
    """What one evaluation does to one active leader."""
    window = timedelta(days=st.tier_window_days)
    suspend = None
    if metrics.upheld_complaints >= st.complaint_suspend_limit:
        suspend = "complaints"

    # the bar is checked once: the evaluation runs this for every leader
    own = bar_checks(tier, metrics, st)
    if suspend is None and own and all(c.met for c in own):
        return Decision(next_tier(tier) or tier, "promotion", None, None, own)
    if tier == Tier.preparation:
        if suspend is None and now - leader_since >= timedelta(days=st.trial_days):
            suspend = "trial_expired"
        return Decision(tier, None, None, suspend, own)

    floor = TIER_ORDER.index(Tier.standard)
    if TIER_ORDER.index(Tier(tier)) <= floor:
        return Decision(tier, None, None, suspend, own)
    # advanced and core must keep meeting the bar that brought them here
    held_bar = previous_tier(tier)
    assert held_bar is not None  # advanced and core have a tier below them
    checks = bar_checks(held_bar, metrics, st)
    if all(c.met for c in checks):
        return Decision(tier, None, None, suspend, checks)
    since = below_bar_since or now
    if now - since >= window * (st.demotion_periods - 1):
        return Decision(held_bar, "demotion", None, suspend, checks)
    return Decision(tier, None, since, suspend, checks)
