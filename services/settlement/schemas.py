from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel


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
    status: str
    picked_up_at: datetime
    available_at: datetime
