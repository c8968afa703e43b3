"""Leaders tables: users (identity), leaders and their pickup points, group bindings."""

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ARRAY, Boolean, Column, Index, Integer, String, text
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
