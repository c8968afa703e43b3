from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, Field


class BalanceOut(BaseModel):
    leader_id: int
    currency: str = "CNY"
    pending_fen: int
    available_fen: int
    withdrawing_fen: int
    withdrawn_fen: int
    receivable_fen: int


class CommissionOut(BaseModel):
    id: int
    order_id: int
    line_id: int
    leader_tier: str
    base_fen: int
    rate: Decimal
    amount_fen: int
    # after-sales refunds of the line and the commission clawed back for them
    refunded_fen: int = 0
    reversed_fen: int = 0
    status: str
    picked_up_at: datetime
    available_at: datetime


class WithdrawalIn(BaseModel):
    # bounded like every id: a larger number would overflow the INTEGER column (a 500)
    amount_fen: int = Field(gt=0, le=2**31 - 1)


class RejectIn(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


class WithdrawalOut(BaseModel):
    id: int
    leader_id: int
    amount_fen: int
    currency: str = "CNY"
    status: str
    reason: str | None
    created_at: datetime
    decided_at: datetime | None
    settled_at: datetime | None
    provider_transfer_id: str | None
    failure_code: str | None
    overdue: bool = False


class ReleaseOut(BaseModel):
    released: int
