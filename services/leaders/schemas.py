from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, Field


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
    leader_id: int = Field(gt=0)


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
