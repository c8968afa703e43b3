"""Leaders tables: users (identity), leaders and their pickup points, group bindings."""

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ARRAY, Column, String
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
