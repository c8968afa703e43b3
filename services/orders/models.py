"""Orders tables: group orders and their lines, payments, refunds, delivery lists."""

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, Column, Index, Numeric, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from services.common.models import plumbing_tables, ts_field

SCHEMA = "orders"
plumbing_tables(SCHEMA)


class OrderStatus(StrEnum):
    pending_payment = "pending_payment"
    paid = "paid"
    confirmed = "confirmed"
    ready_for_pickup = "ready_for_pickup"
    picked_up = "picked_up"
    completed = "completed"
    cancelled = "cancelled"


class LineStatus(StrEnum):
    active = "active"
    cancelled = "cancelled"


class GroupOrder(SQLModel, table=True):
    __tablename__ = "orders"
    __table_args__ = (
        Index("ix_orders_shopper", "shopper_id", "id"),
        Index("ix_orders_leader", "leader_id", "id"),
        Index("ix_orders_sale_date_status", "sale_date", "status"),
        Index(
            "ix_orders_pending_expiry", "expires_at", postgresql_where="status = 'pending_payment'"
        ),
        CheckConstraint("refunded_fen >= 0 AND refunded_fen <= total_fen", name="refund_bounds"),
        {"schema": SCHEMA},
    )

    id: int | None = Field(default=None, primary_key=True)
    shopper_id: int
    leader_id: int
    # snapshots taken when the order is placed: later tier changes never touch them
    leader_tier: str = Field(max_length=16)
    commission_rate: Decimal = Field(sa_column=Column(Numeric(5, 4), nullable=False))
    sale_date: date
    pickup_date: date
    status: str = Field(default=OrderStatus.pending_payment, max_length=20)
    total_fen: int
    refunded_fen: int = Field(default=0)
    currency: str = Field(default="CNY", max_length=3)
    payment_intent_id: str | None = Field(default=None, max_length=100, unique=True)
    pay_attempts: int = Field(default=0)
    pickup_code: str | None = Field(default=None, max_length=32, unique=True)
    delivery_list_id: int | None = Field(default=None, index=True)
    cancel_reason: str | None = Field(default=None, max_length=64)
    expires_at: datetime = ts_field()
    created_at: datetime = ts_field(default_now=True)
    paid_at: datetime | None = ts_field(nullable=True)
    confirmed_at: datetime | None = ts_field(nullable=True)
    ready_at: datetime | None = ts_field(nullable=True)
    picked_up_at: datetime | None = ts_field(nullable=True)
    completed_at: datetime | None = ts_field(nullable=True)
    cancelled_at: datetime | None = ts_field(nullable=True)


class OrderLine(SQLModel, table=True):
    __tablename__ = "order_lines"
    __table_args__ = (
        Index("ix_order_lines_order", "order_id"),
        Index("ix_order_lines_deal", "deal_id"),
        CheckConstraint("quantity > 0", name="positive_quantity"),
        CheckConstraint(
            "refunded_quantity >= 0 AND refunded_quantity <= quantity",
            name="refund_quantity_bounds",
        ),
        {"schema": SCHEMA},
    )

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key=f"{SCHEMA}.orders.id")
    deal_id: int
    product_id: int
    product_name: str = Field(max_length=200)
    category: str = Field(max_length=32)
    unit_price_fen: int
    quantity: int
    group_threshold: int = Field(default=0)
    status: str = Field(default=LineStatus.active, max_length=16)
    refunded_quantity: int = Field(default=0)
    refunded_fen: int = Field(default=0)
    # units under an open or approved after-sales request: never above quantity (CHECK),
    # claimed by one conditional UPDATE so two racing requests cannot over-claim
    after_sales_quantity: int = Field(default=0)


class RefundStatus(StrEnum):
    pending = "pending"
    succeeded = "succeeded"
    failed = "failed"


class Refund(SQLModel, table=True):
    """A refund we owe; executed against the provider with key `refund:<id>`."""

    __tablename__ = "refunds"
    __table_args__ = (
        UniqueConstraint("order_id", "reason", "source_ref", name="uq_refunds_source"),
        CheckConstraint("amount_fen > 0", name="positive_amount"),
        {"schema": SCHEMA},
    )

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key=f"{SCHEMA}.orders.id", index=True)
    reason: str = Field(max_length=32)  # group_threshold_missed | late_payment | after_sales
    source_ref: str = Field(default="", max_length=64)
    amount_fen: int
    lines: list = Field(default_factory=list, sa_column=Column(JSONB, nullable=False))
    status: str = Field(default=RefundStatus.pending, max_length=16, index=True)
    provider_refund_id: str | None = Field(default=None, max_length=100)
    attempts: int = Field(default=0)
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = ts_field(default_now=True)
    succeeded_at: datetime | None = ts_field(nullable=True)


class PaymentEvent(SQLModel, table=True):
    """Every verified provider webhook, stored raw before it is acted on."""

    __tablename__ = "payment_events"
    __table_args__ = ({"schema": SCHEMA},)

    id: str = Field(primary_key=True, max_length=100)
    type: str = Field(max_length=100)
    payload: dict = Field(sa_column=Column(JSONB, nullable=False))
    received_at: datetime = ts_field(default_now=True)


class DeliveryList(SQLModel, table=True):
    """配送单: what goes to one leader's pickup point for one sale day."""

    __tablename__ = "delivery_lists"
    __table_args__ = (
        UniqueConstraint("sale_date", "leader_id", name="uq_delivery_lists_day_leader"),
        Index("ix_delivery_lists_pickup", "pickup_date", "leader_id"),
        {"schema": SCHEMA},
    )

    id: int | None = Field(default=None, primary_key=True)
    sale_date: date
    pickup_date: date
    leader_id: int
    status: str = Field(default="pending", max_length=16)
    created_at: datetime = ts_field(default_now=True)
    received_at: datetime | None = ts_field(nullable=True)


class AfterSalesStatus(StrEnum):
    requested = "requested"
    approved = "approved"
    rejected = "rejected"


class AfterSalesRequest(SQLModel, table=True):
    """售后: a shopper's request to refund some units of some lines of a picked-up order."""

    __tablename__ = "after_sales_requests"
    __table_args__ = (
        Index("ix_after_sales_order", "order_id"),
        Index("ix_after_sales_leader", "leader_id", "id"),
        CheckConstraint("amount_fen > 0", name="positive_amount"),
        {"schema": SCHEMA},
    )

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key=f"{SCHEMA}.orders.id")
    shopper_id: int
    leader_id: int
    reason: str = Field(max_length=500)
    status: str = Field(default=AfterSalesStatus.requested, max_length=16)
    lines: list = Field(default_factory=list, sa_column=Column(JSONB, nullable=False))
    amount_fen: int
    decided_by: int | None = Field(default=None)
    decision_note: str | None = Field(default=None, max_length=500)
    created_at: datetime = ts_field(default_now=True)
    decided_at: datetime | None = ts_field(nullable=True)


# --- orders' copy of the leaders service's bindings and terms (service/leaders.py) -------


class ShopperLeader(SQLModel, table=True):
    """Which leader each shopper is bound to, as of the leaders service's `version`."""

    __tablename__ = "shopper_leaders"
    __table_args__ = ({"schema": SCHEMA},)

    shopper_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    leader_id: int
    version: int = Field(sa_column=Column(BigInteger, nullable=False))


class LeaderTerms(SQLModel, table=True):
    """A leader's status and tier, as of the leaders service's `version`."""

    __tablename__ = "leader_terms"
    __table_args__ = ({"schema": SCHEMA},)

    leader_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    status: str = Field(max_length=16)
    tier: str = Field(max_length=16)
    version: int = Field(sa_column=Column(BigInteger, nullable=False))
