"""Leaders tables: users (identity), leaders and their pickup points, group bindings."""

from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from services.common.models import plumbing_tables, ts_field

SCHEMA = "leaders"
plumbing_tables(SCHEMA)


class Tier(StrEnum):
    preparation = "preparation"
    standard = "standard"
    advanced = "advanced"
    core = "core"


TIER_ORDER = [Tier.preparation, Tier.standard, Tier.advanced, Tier.core]


class LeaderStatus(StrEnum):
    active = "active"
    suspended = "suspended"
    terminated = "terminated"


class User(SQLModel, table=True):
    """A person who signs in: shoppers (WeChat), leaders (shoppers approved), staff."""

    __tablename__ = "users"
    __table_args__ = ({"schema": SCHEMA},)

    id: int | None = Field(default=None, primary_key=True)
    # the identity provider's stable id: WeChat openid, `dev:<name>`, `staff:<name>`
    external_id: str = Field(max_length=200, unique=True)
    display_name: str = Field(default="", max_length=100)
    roles: list[str] = Field(
        default_factory=lambda: ["shopper"], sa_column=Column(ARRAY(String(16)), nullable=False)
    )
    bound_leader_id: int | None = Field(default=None, index=True)
    created_at: datetime = ts_field(default_now=True)
    bound_at: datetime | None = ts_field(nullable=True)
    # bumped with every change of bound_leader_id: orders' copy keeps the newest
    binding_version: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )


class Leader(SQLModel, table=True):
    __tablename__ = "leaders"
    __table_args__ = ({"schema": SCHEMA},)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key=f"{SCHEMA}.users.id", unique=True)
    status: str = Field(default=LeaderStatus.active, max_length=16, index=True)
    tier: str = Field(default=Tier.preparation, max_length=16, index=True)
    community_name: str = Field(max_length=200)
    pickup_address: str = Field(max_length=500)
    pickup_hours: str = Field(default="", max_length=100)
    phone: str = Field(default="", max_length=32)
    group_size: int = Field(default=0)
    latitude: float | None = Field(default=None)
    longitude: float | None = Field(default=None)
    created_at: datetime = ts_field(default_now=True)
    tier_since: datetime = ts_field(default_now=True)
    # bumped with every change of status or tier: orders' copy keeps the newest
    terms_version: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    # deposit (保证金): its balance moves only with a `deposit_entries` row
    deposit_status: str = Field(
        default="unpaid",
        sa_column=Column(String(16), nullable=False, server_default="unpaid"),
    )
    deposit_balance_fen: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default="0")
    )
    deposit_intent_id: str | None = Field(default=None, max_length=100)
    deposit_pay_attempts: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default="0")
    )
    onboarding_done: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default="false")
    )
    invite_code: str | None = Field(default=None, max_length=16, unique=True)
    # first evaluation that found the leader below the bar of the tier they hold; cleared
    # when they meet it again (demotion needs consecutive periods below)
    below_bar_since: datetime | None = ts_field(nullable=True)


class ApplicationStatus(StrEnum):
    pending = "pending"
    approved = "approved"
    rejected = "rejected"


class LeaderApplication(SQLModel, table=True):
    __tablename__ = "applications"
    __table_args__ = (
        # one open application per shopper, enforced by the database under races
        Index(
            "uq_applications_one_pending",
            "user_id",
            unique=True,
            postgresql_where=text("status = 'pending'"),
        ),
        {"schema": SCHEMA},
    )

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key=f"{SCHEMA}.users.id", index=True)
    status: str = Field(default=ApplicationStatus.pending, max_length=16, index=True)
    community_name: str = Field(max_length=200)
    pickup_address: str = Field(max_length=500)
    pickup_hours: str = Field(max_length=100)
    group_size: int
    phone: str = Field(max_length=32)
    latitude: float | None = Field(default=None)
    longitude: float | None = Field(default=None)
    reason: str | None = Field(default=None, max_length=500)
    leader_id: int | None = Field(default=None)
    decided_by: int | None = Field(default=None)
    created_at: datetime = ts_field(default_now=True)
    decided_at: datetime | None = ts_field(nullable=True)


class DepositEntry(SQLModel, table=True):
    """The deposit's ledger: payment (+), deduction (-), refund (-)."""

    __tablename__ = "deposit_entries"
    __table_args__ = (
        # a provider object (intent, refund) is booked once however often it is reported
        Index("uq_deposit_entries_reference", "kind", "reference", unique=True),
        {"schema": SCHEMA},
    )

    id: int | None = Field(default=None, primary_key=True)
    leader_id: int = Field(foreign_key=f"{SCHEMA}.leaders.id", index=True)
    kind: str = Field(max_length=16)
    amount_fen: int
    balance_after_fen: int
    reason: str = Field(default="", max_length=500)
    reference: str | None = Field(default=None, max_length=100)
    created_by: int | None = Field(default=None)
    created_at: datetime = ts_field(default_now=True)


class StatusChange(SQLModel, table=True):
    """Every suspension, reinstatement and termination, with who and why."""

    __tablename__ = "status_changes"
    __table_args__ = ({"schema": SCHEMA},)

    id: int | None = Field(default=None, primary_key=True)
    leader_id: int = Field(foreign_key=f"{SCHEMA}.leaders.id", index=True)
    from_status: str = Field(max_length=16)
    to_status: str = Field(max_length=16)
    reason: str = Field(max_length=500)
    # staff user id; None when a rule (trial, complaints) decided
    changed_by: int | None = Field(default=None)
    created_at: datetime = ts_field(default_now=True)


class OrderFact(SQLModel, table=True):
    """Our projection of the orders service's facts (from its events; never its tables)."""

    __tablename__ = "order_facts"
    __table_args__ = (
        Index("ix_order_facts_leader_paid", "leader_id", "paid_at"),
        {"schema": SCHEMA},
    )

    order_id: int = Field(primary_key=True)
    leader_id: int | None = Field(default=None)
    shopper_id: int | None = Field(default=None, index=True)
    total_fen: int = Field(default=0)
    refunded_fen: int = Field(default=0)
    sale_date: date | None = Field(default=None)
    paid_at: datetime | None = ts_field(nullable=True)
    picked_up_at: datetime | None = ts_field(nullable=True)
    completed_at: datetime | None = ts_field(nullable=True)
    cancelled_at: datetime | None = ts_field(nullable=True)


class RefundFact(SQLModel, table=True):
    __tablename__ = "refund_facts"
    __table_args__ = ({"schema": SCHEMA},)

    refund_id: str = Field(primary_key=True, max_length=100)
    order_id: int = Field(index=True)
    amount_fen: int
    refunded_at: datetime = ts_field()


class Complaint(SQLModel, table=True):
    __tablename__ = "complaints"
    __table_args__ = (
        UniqueConstraint("shopper_id", "order_id", name="uq_complaints_shopper_order"),
        Index("ix_complaints_leader_status", "leader_id", "status", "created_at"),
        {"schema": SCHEMA},
    )

    id: int | None = Field(default=None, primary_key=True)
    leader_id: int = Field(foreign_key=f"{SCHEMA}.leaders.id")
    shopper_id: int
    order_id: int
    reason: str = Field(max_length=1000)
    status: str = Field(default="open", max_length=16)  # open | upheld | dismissed
    note: str | None = Field(default=None, max_length=1000)
    resolved_by: int | None = Field(default=None)
    created_at: datetime = ts_field(default_now=True)
    resolved_at: datetime | None = ts_field(nullable=True)


class TrainingSession(SQLModel, table=True):
    __tablename__ = "training_sessions"
    __table_args__ = ({"schema": SCHEMA},)

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)  # onboarding | regular
    topic: str = Field(max_length=200)
    starts_at: datetime = ts_field(index=True)
    created_by: int | None = Field(default=None)
    created_at: datetime = ts_field(default_now=True)


class TrainingAttendance(SQLModel, table=True):
    __tablename__ = "training_attendance"
    __table_args__ = ({"schema": SCHEMA},)

    session_id: int = Field(foreign_key=f"{SCHEMA}.training_sessions.id", primary_key=True)
    leader_id: int = Field(foreign_key=f"{SCHEMA}.leaders.id", primary_key=True, index=True)
    recorded_by: int | None = Field(default=None)
    recorded_at: datetime = ts_field(default_now=True)


class Evaluation(SQLModel, table=True):
    """One per leader per day: what makes the daily evaluation idempotent and race-free."""

    __tablename__ = "evaluations"
    __table_args__ = ({"schema": SCHEMA},)

    leader_id: int = Field(foreign_key=f"{SCHEMA}.leaders.id", primary_key=True)
    evaluation_date: date = Field(primary_key=True)
    tier_before: str = Field(max_length=16)
    outcome: str = Field(default="pending", max_length=32)
    metrics: dict = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    created_at: datetime = ts_field(default_now=True)


class TierChange(SQLModel, table=True):
    __tablename__ = "tier_history"
    __table_args__ = ({"schema": SCHEMA},)

    id: int | None = Field(default=None, primary_key=True)
    leader_id: int = Field(foreign_key=f"{SCHEMA}.leaders.id", index=True)
    from_tier: str = Field(max_length=16)
    to_tier: str = Field(max_length=16)
    direction: str = Field(max_length=16)  # promotion | demotion
    evaluation_date: date
    metrics: dict = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    created_at: datetime = ts_field(default_now=True)


class Handover(SQLModel, table=True):
    __tablename__ = "handovers"
    __table_args__ = ({"schema": SCHEMA},)

    id: int | None = Field(default=None, primary_key=True)
    from_leader_id: int = Field(foreign_key=f"{SCHEMA}.leaders.id", index=True)
    to_leader_id: int = Field(foreign_key=f"{SCHEMA}.leaders.id", index=True)
    shoppers_moved: int
    reason: str = Field(max_length=500)
    created_by: int | None = Field(default=None)
    created_at: datetime = ts_field(default_now=True)
