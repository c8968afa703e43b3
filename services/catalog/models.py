"""Catalog tables: products, sale days and their deals, stock reservations."""

from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from services.common.models import plumbing_tables, ts_field

SCHEMA = "catalog"
plumbing_tables(SCHEMA)


class Category(StrEnum):
    fresh = "fresh"
    snacks_drinks = "snacks_drinks"
    household = "household"
    beauty = "beauty"


class SaleDayStatus(StrEnum):
    draft = "draft"
    published = "published"
    closed = "closed"


class DealOutcome(StrEnum):
    open = "open"
    succeeded = "succeeded"
    failed = "failed"


class Product(SQLModel, table=True):
    __tablename__ = "products"
    __table_args__ = ({"schema": SCHEMA},)

    id: int | None = Field(default=None, primary_key=True)
    sku: str = Field(max_length=64, unique=True)
    name: str = Field(max_length=200)
    category: str = Field(max_length=32)
    list_price_fen: int
    description: str = Field(default="", max_length=4000)
    image_url: str = Field(default="", max_length=1000)
    created_at: datetime = ts_field(default_now=True)


class SaleDay(SQLModel, table=True):
    __tablename__ = "sale_days"
    __table_args__ = ({"schema": SCHEMA},)

    sale_date: date = Field(primary_key=True)
    status: str = Field(default=SaleDayStatus.draft, max_length=16, index=True)
    cutoff_at: datetime = ts_field()
    pickup_date: date
    published_at: datetime | None = ts_field(nullable=True)
    closed_at: datetime | None = ts_field(nullable=True)
    # set once the orders service has applied the cutoff (confirmations, refunds, lists)
    cutoff_done_at: datetime | None = ts_field(nullable=True)
    created_at: datetime = ts_field(default_now=True)


class Deal(SQLModel, table=True):
    __tablename__ = "deals"
    __table_args__ = (
        UniqueConstraint("sale_date", "product_id", name="uq_deals_day_product"),
        CheckConstraint("reserved >= 0 AND reserved <= stock", name="stock_bounds"),
        CheckConstraint("group_price_fen > 0", name="positive_price"),
        {"schema": SCHEMA},
    )

    id: int | None = Field(default=None, primary_key=True)
    sale_date: date = Field(foreign_key=f"{SCHEMA}.sale_days.sale_date", index=True)
    product_id: int = Field(foreign_key=f"{SCHEMA}.products.id")
    group_price_fen: int
    list_price_fen: int
    stock: int
    # units held by unpaid or paid orders; never above stock (CHECK), changed only by
    # one conditional UPDATE per reservation
    reserved: int = Field(default=0)
    per_shopper_limit: int
    group_threshold: int = Field(default=0)
    outcome: str = Field(default=DealOutcome.open, max_length=16)
    confirmed_quantity: int | None = Field(default=None)
    created_at: datetime = ts_field(default_now=True)


class Reservation(SQLModel, table=True):
    """Stock held for one order's line; released once when the order is cancelled."""

    __tablename__ = "reservations"
    __table_args__ = (Index("ix_reservations_order", "order_id"), {"schema": SCHEMA})

    order_id: int = Field(primary_key=True)
    deal_id: int = Field(primary_key=True, foreign_key=f"{SCHEMA}.deals.id")
    shopper_id: int
    quantity: int
    status: str = Field(default="held", max_length=16)
    created_at: datetime = ts_field(default_now=True)


class ShopperDealQuantity(SQLModel, table=True):
    """Units one shopper holds of one deal, across all their orders (per-shopper limit)."""

    __tablename__ = "shopper_deal_quantities"
    __table_args__ = (CheckConstraint("quantity >= 0", name="non_negative"), {"schema": SCHEMA})

    deal_id: int = Field(primary_key=True, foreign_key=f"{SCHEMA}.deals.id")
    shopper_id: int = Field(primary_key=True)
    quantity: int
