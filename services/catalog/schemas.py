from datetime import date, datetime

from pydantic import BaseModel, Field

from services.common.bounds import DB_INT_MAX

from .models import Category


class ProductIn(BaseModel):
    sku: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    name: str = Field(min_length=1, max_length=200)
    category: Category
    list_price_fen: int = Field(gt=0, le=100_000_000)
    description: str = Field(default="", max_length=4000)
    image_url: str = Field(default="", max_length=1000)


class ProductOut(BaseModel):
    id: int
    sku: str
    name: str
    category: str
    list_price_fen: int
    description: str
    image_url: str


class DealIn(BaseModel):
    product_id: int = Field(gt=0, le=DB_INT_MAX)
    group_price_fen: int = Field(gt=0, le=100_000_000)
    stock: int = Field(gt=0, le=1_000_000)
    per_shopper_limit: int = Field(gt=0, le=10_000)
    group_threshold: int = Field(
        default=0, ge=0, le=1_000_000, description="成团数量: minimum total quantity; 0 = none"
    )


class StockTopUpIn(BaseModel):
    add: int = Field(gt=0, le=1_000_000)


class DealOut(BaseModel):
    id: int
    sale_date: date
    product: ProductOut
    group_price_fen: int
    list_price_fen: int
    stock: int
    remaining: int
    ordered: int
    per_shopper_limit: int
    group_threshold: int
    outcome: str


Day = date  # `date` is also a field's name in SaleDayOut


class SaleDayOut(BaseModel):
    date: Day
    status: str
    opens_at: datetime | None
    cutoff_at: datetime
    pickup_date: Day
    deals: list[DealOut]


class ReservationItemIn(BaseModel):
    deal_id: int = Field(gt=0, le=DB_INT_MAX)
    quantity: int = Field(gt=0, le=10_000)


class ReservationIn(BaseModel):
    order_id: int = Field(gt=0, le=DB_INT_MAX)
    shopper_id: int = Field(gt=0, le=DB_INT_MAX)
    items: list[ReservationItemIn] = Field(min_length=1, max_length=20)


class ReservedLineOut(BaseModel):
    deal_id: int
    product_id: int
    product_name: str
    category: str
    unit_price_fen: int
    quantity: int
    group_threshold: int


class ReservationOut(BaseModel):
    sale_date: date
    pickup_date: date
    cutoff_at: datetime
    lines: list[ReservedLineOut]


class CloseOut(BaseModel):
    date: date
    status: str
    deals_succeeded: int
    deals_failed: int
    orders_confirmed: int
    orders_cancelled: int
    lines_refunded: int
    delivery_lists: int
