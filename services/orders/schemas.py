from datetime import date, datetime
from decimal import Decimal

from pydantic import BaseModel, Field, model_validator

from services.common.bounds import DB_INT_MAX


class OrderItemIn(BaseModel):
    deal_id: int = Field(gt=0, le=DB_INT_MAX)
    quantity: int = Field(gt=0, le=1000)


class OrderIn(BaseModel):
    items: list[OrderItemIn] = Field(min_length=1, max_length=20)


class CardIn(BaseModel):
    number: str = Field(pattern=r"^[0-9]{12,19}$")
    exp_month: int = Field(ge=1, le=12)
    exp_year: int = Field(ge=2000, le=2100)
    cvc: str = Field(pattern=r"^[0-9]{3,4}$")


class PayIn(BaseModel):
    payment_method: str | None = Field(
        default=None, min_length=3, max_length=100, pattern=r"^pm_[A-Za-z0-9_]+$"
    )
    card: CardIn | None = Field(default=None, description="test/dev cards by number")

    @model_validator(mode="after")
    def _one_of(self):
        if (self.payment_method is None) == (self.card is None):
            raise ValueError("give exactly one of payment_method or card")
        return self


class LineOut(BaseModel):
    id: int
    deal_id: int
    product_id: int
    product_name: str
    unit_price_fen: int
    quantity: int
    amount_fen: int
    status: str
    refunded_quantity: int
    refunded_fen: int


class PaymentOut(BaseModel):
    intent_id: str | None
    status: str
    amount_fen: int
    currency: str


class OrderOut(BaseModel):
    id: int
    status: str
    shopper_id: int
    leader_id: int
    leader_tier: str
    commission_rate: Decimal
    sale_date: date
    pickup_date: date
    total_fen: int
    refunded_fen: int
    currency: str
    lines: list[LineOut]
    payment: PaymentOut
    pickup_code: str | None = None
    expires_at: datetime
    created_at: datetime
    paid_at: datetime | None
    picked_up_at: datetime | None
    cancel_reason: str | None


class PickupIn(BaseModel):
    # codes are digits; anything else (a NUL above all, which PostgreSQL refuses) is a 422
    pickup_code: str = Field(min_length=1, max_length=32, pattern=r"^\s*[0-9]+\s*$")


class DeliveryLineOut(BaseModel):
    deal_id: int
    product_id: int
    product: str
    quantity: int


class DeliveryListOut(BaseModel):
    id: int
    sale_date: date
    pickup_date: date
    leader_id: int
    status: str
    lines: list[DeliveryLineOut]
    orders: list[int]


class SortingLeaderOut(BaseModel):
    leader_id: int
    quantity: int


class SortingRowOut(BaseModel):
    deal_id: int
    product_id: int
    product: str
    total_quantity: int
    leaders: list[SortingLeaderOut]


class SortingListOut(BaseModel):
    pickup_date: date
    products: list[SortingRowOut]


class CutoffDealOut(BaseModel):
    deal_id: int
    paid_quantity: int
    group_threshold: int
    outcome: str


class CutoffOut(BaseModel):
    sale_date: date
    deals: list[CutoffDealOut]
    orders_confirmed: int
    orders_cancelled: int
    lines_refunded: int
    delivery_lists: int


class AfterSalesLineIn(BaseModel):
    line_id: int = Field(gt=0, le=DB_INT_MAX)
    quantity: int = Field(gt=0, le=1000)


class AfterSalesIn(BaseModel):
    lines: list[AfterSalesLineIn] = Field(min_length=1, max_length=20)
    reason: str = Field(min_length=1, max_length=500)


class ApproveIn(BaseModel):
    note: str | None = Field(default=None, max_length=500)


class RejectIn(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


class AfterSalesLineOut(BaseModel):
    line_id: int
    quantity: int
    amount_fen: int


class AfterSalesOut(BaseModel):
    id: int
    order_id: int
    shopper_id: int
    leader_id: int
    status: str
    reason: str
    lines: list[AfterSalesLineOut]
    amount_fen: int
    decision_note: str | None
    created_at: datetime
    decided_at: datetime | None


class KnownOrdersIn(BaseModel):
    order_ids: list[int] = Field(max_length=1000)


class BindingIn(BaseModel):
    shopper_id: int = Field(gt=0, le=DB_INT_MAX)
    leader_id: int = Field(gt=0, le=DB_INT_MAX)
    version: int = Field(ge=0, le=2**63 - 1)


class LeaderTermsIn(BaseModel):
    leader_id: int = Field(gt=0, le=DB_INT_MAX)
    status: str = Field(max_length=16)
    tier: str = Field(max_length=16)
    version: int = Field(ge=0, le=2**63 - 1)


class LeaderProjectionIn(BaseModel):
    bindings: list[BindingIn] = Field(default_factory=list, max_length=100_000)
    leaders: list[LeaderTermsIn] = Field(default_factory=list, max_length=10_000)
