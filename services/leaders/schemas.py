from datetime import date, datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field

from services.common.bounds import DB_INT_MAX, Id


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"


class WechatSessionIn(BaseModel):
    code: str = Field(min_length=1, max_length=200)


class UserOut(BaseModel):
    id: int
    name: str
    roles: list[str]
    leader_id: int | None
    bound_leader_id: int | None


class SessionOut(TokenOut):
    user: UserOut


class MeOut(BaseModel):
    id: int
    name: str
    roles: list[str]
    leader_id: int | None
    bound_leader_id: int | None


class BindLeaderIn(BaseModel):
    leader_id: int = Field(gt=0, le=DB_INT_MAX)


class LeaderOut(BaseModel):
    id: int
    user_id: int
    status: str
    tier: str
    commission_rate: Decimal
    community_name: str
    pickup_address: str
    pickup_hours: str
    latitude: float | None
    longitude: float | None
    created_at: datetime


class NearbyLeaderOut(BaseModel):
    id: int
    community_name: str
    pickup_address: str
    pickup_hours: str
    latitude: float
    longitude: float
    distance_m: int


class ShopperLeaderOut(BaseModel):
    """What orders needs to snapshot on a new order."""

    shopper_id: int
    leader_id: int
    status: str
    tier: str
    commission_rate: Decimal
    accepts_orders: bool
    # what orders' copy compares: a change of either bumps its version (projection.py)
    binding_version: int = 0
    terms_version: int = 0


# --- applications -----------------------------------------------------------------------

# mainland mobile numbers, optionally with the country code
PHONE_PATTERN = r"^(\+?86)?1[3-9]\d{9}$"


class ApplicationIn(BaseModel):
    community_name: str = Field(min_length=1, max_length=200)
    pickup_address: str = Field(min_length=1, max_length=500)
    pickup_hours: str = Field(min_length=1, max_length=100)
    group_size: int = Field(ge=0, le=100_000)
    phone: str = Field(pattern=PHONE_PATTERN, max_length=32)
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)


class ApplicationOut(BaseModel):
    id: int
    user_id: int
    status: str
    community_name: str
    pickup_address: str
    pickup_hours: str
    group_size: int
    phone: str
    latitude: float | None
    longitude: float | None
    reason: str | None
    leader_id: int | None
    created_at: datetime
    decided_at: datetime | None


class ReasonIn(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


# --- deposit ----------------------------------------------------------------------------


class DepositOut(BaseModel):
    status: str  # unpaid | paid | refunding | refunded
    amount_fen: int  # what the deposit costs
    balance_fen: int  # what is held now (after deductions)


class DepositPayIn(BaseModel):
    payment_method: str | None = Field(default=None, min_length=1, max_length=100)


class DepositPaymentOut(BaseModel):
    intent_id: str | None
    status: str
    amount_fen: int
    currency: str


class DepositStartOut(BaseModel):
    payment: DepositPaymentOut
    deposit: DepositOut


class DeductionIn(BaseModel):
    amount_fen: int = Field(gt=0, le=10_000_000)
    reason: str = Field(min_length=1, max_length=500)


class DepositEntryOut(BaseModel):
    id: int
    leader_id: int
    kind: str
    amount_fen: int
    balance_after_fen: int
    reason: str
    reference: str | None
    created_at: datetime


class LeaderMeOut(BaseModel):
    """A leader's own view; for an applicant who is not (yet) a leader only `application`."""

    id: int | None = None
    status: str | None = None
    tier: str | None = None
    commission_rate: Decimal | None = None
    deposit: DepositOut | None = None
    onboarding_done: bool | None = None
    tier_progress: dict | None = None
    invite_code: str | None = None
    application: ApplicationOut | None = None


class TerminateIn(ReasonIn):
    # leaving in good standing gets the deposit's balance back through the provider
    good_standing: bool = False


class StatusOut(BaseModel):
    id: int
    status: str
    tier: str
    deposit: DepositOut


# --- training, complaints, tiers, handover, growth ----------------------------------------


class SessionIn(BaseModel):
    starts_at: datetime
    topic: str = Field(min_length=1, max_length=200)
    kind: Literal["onboarding", "regular"]


class TrainingSessionOut(BaseModel):
    id: int
    kind: str
    topic: str
    starts_at: datetime


class AttendanceIn(BaseModel):
    leader_ids: list[Id] = Field(min_length=1, max_length=500)


class AttendanceOut(BaseModel):
    session_id: int
    recorded: list[int]


class ComplaintIn(BaseModel):
    leader_id: int = Field(gt=0, le=DB_INT_MAX)
    order_id: int = Field(gt=0, le=DB_INT_MAX)
    reason: str = Field(min_length=1, max_length=1000)


class ResolveIn(BaseModel):
    upheld: bool
    note: str = Field(min_length=1, max_length=1000)


class ComplaintOut(BaseModel):
    id: int
    leader_id: int
    shopper_id: int
    order_id: int
    reason: str
    status: str
    note: str | None
    created_at: datetime
    resolved_at: datetime | None


class EvaluationRunIn(BaseModel):
    leader_ids: list[Id] | None = Field(default=None, max_length=1000)


class TierChangeOut(BaseModel):
    id: int | None = None
    leader_id: int
    from_tier: str
    to_tier: str
    direction: str
    evaluation_date: date
    commission_rate: Decimal | None = None
    metrics: dict
    created_at: datetime | None = None


class EvaluationRunOut(BaseModel):
    changes: list[TierChangeOut]


class HandoverIn(BaseModel):
    to_leader_id: int = Field(gt=0, le=DB_INT_MAX)
    reason: str = Field(min_length=1, max_length=500)


class HandoverOut(BaseModel):
    from_leader_id: int
    to_leader_id: int
    shoppers_moved: int


class InviteOut(BaseModel):
    invite_code: str
    share_link: str


class JoinIn(BaseModel):
    invite_code: str = Field(min_length=4, max_length=16)


class DashboardOut(BaseModel):
    leader_id: int
    from_: date = Field(alias="from")
    to: date
    orders: int
    gmv_fen: int
    active_buyers: int
    new_members: int
    members: int
    repeat_purchase_rate: Decimal
    conversion_rate: Decimal

    model_config = {"populate_by_name": True}
