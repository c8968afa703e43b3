"""The events the services tell each other: one model per topic.

The producer builds the payload from the model (`emit_event(s, SCHEMA, OrderPaid(...))`)
and every consumer parses it with the same model (`OrderPaid.model_validate(payload)`),
so a payload's shape is written here once instead of being learnt from its producer.
`extra="forbid"`: a key nobody declared fails as loudly as a missing one.

The JSON each model writes is what the producers wrote before there were models: money
as an integer number of fen, ids as integers, dates as `YYYY-MM-DD`, timestamps as
Python's `isoformat()`, rates as decimal strings. Change a model and you change every
consumer's input: add a field with a default, never rename or retype one in place.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from services.common.money import Fen

# a rate travels as its decimal text ("0.1200"), never as a float
Rate = Annotated[Decimal, PlainSerializer(str, return_type=str, when_used="json")]
# pydantic writes UTC as "Z"; events have always carried `isoformat()` ("+00:00")
Timestamp = Annotated[
    AwareDatetime, PlainSerializer(datetime.isoformat, return_type=str, when_used="json")
]

CancelReason = Literal[
    "cancelled_by_shopper", "expired", "unpaid_at_cutoff", "group_threshold_missed"
]
RefundReason = Literal["group_threshold_missed", "after_sales", "late_payment"]
LeaderStatus = Literal["active", "suspended", "terminated"]
LeaderTier = Literal["preparation", "standard", "advanced", "core"]
TierDirection = Literal["promotion", "demotion"]


class Event(BaseModel):
    """A fact one service tells the others; `topic` names it, the fields are its payload."""

    model_config = ConfigDict(extra="forbid")
    topic: ClassVar[str]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- orders ----------------------------------------------------------------------------------


class OrderPaid(Event):
    topic: ClassVar[str] = "order.paid"
    order_id: int
    shopper_id: int
    leader_id: int
    sale_date: date
    total_fen: Fen


class OrderConfirmed(Event):
    """At the cutoff: the order's groups met their thresholds, it goes on a delivery list."""

    topic: ClassVar[str] = "order.confirmed"
    order_id: int
    leader_id: int


class OrderCancelled(Event):
    topic: ClassVar[str] = "order.cancelled"
    order_id: int
    reason: CancelReason


class OrderReadyForPickup(Event):
    topic: ClassVar[str] = "order.ready_for_pickup"
    order_id: int
    leader_id: int


class PickedUpLine(_Part):
    line_id: int
    deal_id: int
    base_fen: Fen  # what the line paid less what was refunded: the commission's base


class OrderPickedUp(Event):
    topic: ClassVar[str] = "order.picked_up"
    order_id: int
    shopper_id: int
    leader_id: int
    leader_tier: LeaderTier  # snapshotted when the order was placed
    commission_rate: Rate  # likewise
    sale_date: date
    picked_up_at: Timestamp
    total_fen: Fen
    refunded_fen: Fen
    lines: list[PickedUpLine]  # the active lines


class RefundedLine(_Part):
    line_id: int
    # units claimed: after-sales refunds carry it, a missed threshold refunds whole lines
    # and leaves it out (absent, not null)
    quantity: int | None = None
    amount_fen: Fen

    @model_serializer(mode="wrap")
    def _absent_quantity_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if self.quantity is None:
            out.pop("quantity", None)
        return out


class OrderRefunded(Event):
    """The provider returned the money (sent once the refund succeeded)."""

    topic: ClassVar[str] = "order.refunded"
    order_id: int
    refund_id: int
    leader_id: int
    reason: RefundReason
    amount_fen: Fen
    lines: list[RefundedLine]  # empty when no line is refunded (a payment after cancel)


class OrderCompleted(Event):
    """The after-sales window closed with no request open."""

    topic: ClassVar[str] = "order.completed"
    order_id: int
    shopper_id: int
    leader_id: int
    total_fen: Fen
    refunded_fen: Fen
    completed_at: Timestamp


class DepositPaymentSucceeded(Event):
    """A leader's deposit was paid: the provider's webhook lands at orders, the deposit
    belongs to leaders."""

    topic: ClassVar[str] = "payment.deposit_succeeded"
    leader_id: int
    intent_id: str
    amount_fen: Fen


# --- leaders ---------------------------------------------------------------------------------


class ShopperBound(Event):
    """A shopper's pickup point, for orders' copy; `version` orders the changes."""

    topic: ClassVar[str] = "shopper.bound"
    shopper_id: int
    leader_id: int
    version: int


class LeaderStatusChanged(Event):
    topic: ClassVar[str] = "leader.status_changed"
    leader_id: int
    from_status: LeaderStatus
    to_status: LeaderStatus
    reason: str  # staff's words, or "rule: <name>"
    # the leader's terms as of this change, for orders' copy; `version` orders them
    status: LeaderStatus
    tier: LeaderTier
    version: int


class WindowMetrics(_Part):
    """A leader's numbers over the evaluation window (leaders/tiers.py `Metrics`)."""

    gmv_fen: Fen
    buyers: int
    orders: int
    completed_orders: int
    upheld_complaints: int
    trainings: int
    onboarding_done: bool
    deposit_paid: bool
    complaint_rate: Rate


class BarCheck(_Part):
    """One requirement of a bar (leaders/tiers.py `Check`)."""

    name: str
    value: bool | int | str
    required: bool | int | str
    met: bool


class TierEvaluation(_Part):
    metrics: WindowMetrics
    checks: list[BarCheck]
    window_days: int


class LeaderTierChanged(Event):
    topic: ClassVar[str] = "leader.tier_changed"
    leader_id: int
    from_tier: LeaderTier
    to_tier: LeaderTier
    direction: TierDirection
    evaluation_date: date
    commission_rate: Rate  # the new tier's
    metrics: TierEvaluation
    # the leader's terms as of this change, for orders' copy; `version` orders them
    status: LeaderStatus
    tier: LeaderTier
    version: int


TOPICS: dict[str, type[Event]] = {
    model.topic: model
    for model in (
        OrderPaid,
        OrderConfirmed,
        OrderCancelled,
        OrderReadyForPickup,
        OrderPickedUp,
        OrderRefunded,
        OrderCompleted,
        DepositPaymentSucceeded,
        ShopperBound,
        LeaderStatusChanged,
        LeaderTierChanged,
    )
}
