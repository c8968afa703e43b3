"""Leaders rules: identity (sign-in), group binding, leader lookup, pickup points."""

from __future__ import annotations

import hmac
import math
from decimal import Decimal

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from services.common.auth import issue_token
from services.common.clock import clock
from services.common.errors import Conflict, NotFound, PeerUnavailable, Unauthorized
from services.common.events import emit_event
from services.common.settings import get_settings
from services.contracts.events import ShopperBound

from . import projection
from .models import SCHEMA, Leader, LeaderStatus, User


class LeaderNotFound(NotFound):
    code = "leader_not_found"


class LeaderNotActive(Conflict):
    code = "leader_not_active"


class NotBound(NotFound):
    code = "no_bound_leader"


def rate_for(tier: str) -> Decimal:
    return get_settings().rate_for_tier(tier)


async def upsert_user(s: AsyncSession, external_id: str, name: str, roles: list[str]) -> User:
    row = (
        await s.execute(
            text(
                "INSERT INTO leaders.users (external_id, display_name, roles, created_at) "
                "VALUES (:e, :n, :r, now()) ON CONFLICT (external_id) "
                "DO UPDATE SET display_name = leaders.users.display_name RETURNING id"
            ),
            {"e": external_id, "n": name, "r": roles},
        )
    ).scalar_one()
    return (await s.execute(select(User).where(User.id == row))).scalar_one()


async def leader_of_user(s: AsyncSession, user_id: int) -> Leader | None:
    return (await s.execute(select(Leader).where(Leader.user_id == user_id))).scalar_one_or_none()


async def token_for(s: AsyncSession, user: User) -> tuple[str, list[str], int | None]:
    roles = list(user.roles)
    assert user.id is not None  # a stored row has its id
    leader = await leader_of_user(s, user.id)
    leader_id = None
    if leader and leader.status != LeaderStatus.terminated:
        leader_id = leader.id
        roles.append("leader")
    return issue_token(user.id, roles, leader_id, user.display_name), roles, leader_id


async def staff_login(s: AsyncSession, username: str, password: str) -> str:
    st = get_settings()
    ok_user = hmac.compare_digest(username.encode(), st.staff_username.encode())
    ok_pass = hmac.compare_digest(password.encode(), st.staff_password.encode())
    if not (ok_user and ok_pass):
        raise Unauthorized("wrong username or password", code="invalid_credentials")
    user = await upsert_user(s, f"staff:{username}", username, ["staff"])
    token, _, _ = await token_for(s, user)
    return token


async def wechat_identity(code: str) -> tuple[str, str]:
    """(external id, display name) for a `wx.login` code."""
    st = get_settings()
    if code.startswith("dev:"):
        name = code[4:]
        if not st.dev_identity_provider:
            raise Unauthorized("the dev identity provider is off", code="dev_login_disabled")
        if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
            raise Unauthorized("dev names are 1-64 letters, digits, - _ .", code="invalid_code")
        return f"dev:{name}", name
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            resp = await client.get(
                st.wechat_code2session_url,
                params={
                    "appid": st.wechat_app_id,
                    "secret": st.wechat_app_secret,
                    "js_code": code,
                    "grant_type": "authorization_code",
                },
            )
        body = resp.json()
    except (httpx.HTTPError, ValueError) as e:
        raise PeerUnavailable("WeChat login is unavailable", code="wechat_unavailable") from e
    openid = body.get("openid")
    if not openid:
        raise Unauthorized("WeChat refused the login code", code="wechat_login_failed")
    return f"wx:{openid}", ""


async def wechat_login(s: AsyncSession, code: str) -> tuple[str, User, list[str], int | None]:
    external_id, name = await wechat_identity(code)
    user = await upsert_user(s, external_id, name, ["shopper"])
    token, roles, leader_id = await token_for(s, user)
    return token, user, roles, leader_id


async def get_user(s: AsyncSession, user_id: int) -> User:
    user = await s.get(User, user_id)
    if user is None:
        raise NotFound("user not found", code="user_not_found")
    return user


async def get_leader(s: AsyncSession, leader_id: int) -> Leader:
    leader = await s.get(Leader, leader_id)
    if leader is None:
        raise LeaderNotFound(f"leader {leader_id} does not exist")
    return leader


async def bind_shopper(s: AsyncSession, user_id: int, leader_id: int) -> User:
    leader = await get_leader(s, leader_id)
    if leader.status != LeaderStatus.active:
        raise LeaderNotActive("this pickup point is not taking new members")
    version = (
        await s.execute(
            text(
                "UPDATE leaders.users SET bound_leader_id = :l, bound_at = :now, "
                "binding_version = binding_version + 1 WHERE id = :u "
                "AND bound_leader_id IS DISTINCT FROM :l RETURNING binding_version"
            ),
            {"l": leader_id, "u": user_id, "now": clock.now()},
        )
    ).scalar_one_or_none()
    if version is not None:
        await emit_event(s, SCHEMA, ShopperBound(**projection.binding(user_id, leader_id, version)))
    return await get_user(s, user_id)


async def shopper_leader(s: AsyncSession, user_id: int) -> dict:
    row = (
        await s.execute(
            text(
                "SELECT u.id AS shopper_id, l.id AS leader_id, l.status, l.tier, "
                "u.binding_version, l.terms_version FROM leaders.users u "
                "JOIN leaders.leaders l ON l.id = u.bound_leader_id WHERE u.id = :u"
            ),
            {"u": user_id},
        )
    ).first()
    if row is None:
        raise NotBound("bind to a leader's pickup point first (PUT /me/leader)")
    return {
        "shopper_id": row.shopper_id,
        "leader_id": row.leader_id,
        "status": row.status,
        "tier": row.tier,
        "commission_rate": rate_for(row.tier),
        "accepts_orders": row.status == LeaderStatus.active,
        "binding_version": row.binding_version,
        "terms_version": row.terms_version,
    }


async def list_leaders(
    s: AsyncSession, *, tier: str | None, status: str | None, after_id: int | None, limit: int
) -> list[Leader]:
    q = select(Leader).order_by(col(Leader.id).desc()).limit(limit + 1)
    if tier:
        q = q.where(Leader.tier == tier)
    if status:
        q = q.where(Leader.status == status)
    if after_id:
        q = q.where(col(Leader.id) < after_id)
    return list((await s.execute(q)).scalars())


EARTH_RADIUS_M = 6_371_008.8


def great_circle_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Haversine distance in metres (mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


async def nearby(s: AsyncSession, lat: float, lng: float, limit: int, offset: int) -> list[dict]:
    radius_m = get_settings().nearby_radius_km * 1000
    # to ~1 cm: PostgreSQL's float arithmetic raises on underflow, so a coordinate like
    # 5e-324 made the distance formula fail (a 500); no real position is that precise
    lat, lng = round(lat, 7), round(lng, 7)
    rows = (
        await s.execute(
            text(
                "SELECT * FROM (SELECT id, community_name, pickup_address, pickup_hours, latitude, "
                "longitude, 2 * :r * asin(least(1, sqrt(power(sin(radians(latitude - :lat) / 2), 2) + "
                "cos(radians(:lat)) * cos(radians(latitude)) * "
                "power(sin(radians(longitude - :lng) / 2), 2)))) AS distance_m "
                "FROM leaders.leaders WHERE status = 'active' AND latitude IS NOT NULL) d "
                "WHERE distance_m <= :radius ORDER BY distance_m, id LIMIT :limit OFFSET :offset"
            ),
            {
                "r": EARTH_RADIUS_M,
                "lat": lat,
                "lng": lng,
                "radius": radius_m,
                "limit": limit,
                "offset": offset,
            },
        )
    ).all()
    return [dict(r._mapping) | {"distance_m": round(r.distance_m)} for r in rows]


def leader_out(leader: Leader) -> dict:
    return leader.model_dump() | {"commission_rate": rate_for(leader.tier)}
