"""Leaders routes (also sign-in and `/me`, the identity the other services rely on)."""

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query

from services.common.auth import CurrentPrincipal, Shopper, Staff, require_service_token
from services.common.bounds import PathId
from services.common.db import get_db
from services.common.events import kick
from services.common.pagination import Page, PageDep, make_page

from . import program_api, projection, service
from .models import LeaderStatus, Tier
from .schemas import (
    BindLeaderIn,
    LeaderOut,
    MeOut,
    NearbyLeaderOut,
    SessionOut,
    ShopperLeaderOut,
    TokenOut,
    UserOut,
    WechatSessionIn,
)

db = get_db("leaders")
auth = APIRouter(prefix="/auth", tags=["auth"])
me = APIRouter(prefix="/me", tags=["me"])
leaders = APIRouter(prefix="/leaders", tags=["leaders"])
internal = APIRouter(
    prefix="/internal",
    tags=["internal"],
    dependencies=[Depends(require_service_token)],
    include_in_schema=False,
)


@auth.post("/staff/token", response_model=TokenOut)
async def staff_token(
    username: Annotated[str, Form(max_length=100)], password: Annotated[str, Form(max_length=200)]
) -> TokenOut:
    async with db.transaction() as s:
        return TokenOut(access_token=await service.staff_login(s, username, password))


@auth.post("/wechat/session", response_model=SessionOut)
async def wechat_session(body: WechatSessionIn) -> SessionOut:
    async with db.transaction() as s:
        token, user, roles, leader_id = await service.wechat_login(s, body.code)
    return SessionOut(
        access_token=token,
        user=UserOut(
            id=user.id,
            name=user.display_name,
            roles=roles,
            leader_id=leader_id,
            bound_leader_id=user.bound_leader_id,
        ),
    )


def _me(user, principal) -> MeOut:
    return MeOut(
        id=user.id,
        name=user.display_name,
        roles=list(principal.roles),
        leader_id=principal.leader_id,
        bound_leader_id=user.bound_leader_id,
    )


@me.get("", response_model=MeOut)
async def get_me(principal: CurrentPrincipal) -> MeOut:
    async with db.session() as s:
        return _me(await service.get_user(s, principal.user_id), principal)


@me.put("/leader", response_model=MeOut)
async def bind_leader(body: BindLeaderIn, principal: Shopper) -> MeOut:
    async with db.transaction() as s:
        out = _me(await service.bind_shopper(s, principal.user_id, body.leader_id), principal)
    kick(db)
    await projection.push(db, shoppers=[principal.user_id])  # the next order goes there
    return out


@leaders.get("", response_model=Page[LeaderOut])
async def list_leaders(
    _: Staff, page: PageDep, tier: Tier | None = None, status: LeaderStatus | None = None
) -> Page[LeaderOut]:
    async with db.session() as s:
        rows = await service.list_leaders(
            s, tier=tier, status=status, after_id=page.after_id, limit=page.limit
        )
    rows, cursor = make_page(rows, page)
    return Page(items=[LeaderOut(**service.leader_out(r)) for r in rows], next_cursor=cursor)


@leaders.get("/nearby", response_model=Page[NearbyLeaderOut])
async def nearby(
    lat: Annotated[float, Query(ge=-90, le=90)],
    lng: Annotated[float, Query(ge=-180, le=180)],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[int, Query(ge=0, le=100_000, description="offset")] = 0,
) -> Page[NearbyLeaderOut]:
    async with db.session() as s:
        rows = await service.nearby(s, lat, lng, limit + 1, cursor)
    more = len(rows) > limit
    return Page(
        items=[NearbyLeaderOut(**r) for r in rows[:limit]],
        next_cursor=str(cursor + limit) if more else None,
    )


@leaders.get("/{leader_id}", response_model=LeaderOut)
async def get_leader(leader_id: PathId, _: Staff) -> LeaderOut:
    async with db.session() as s:
        return LeaderOut(**service.leader_out(await service.get_leader(s, leader_id)))


@internal.get("/shoppers/{user_id}/leader", response_model=ShopperLeaderOut)
async def shopper_leader(user_id: PathId) -> ShopperLeaderOut:
    async with db.read() as s:  # asked on every order placed: one statement, no BEGIN
        return ShopperLeaderOut(**await service.shopper_leader(s, user_id))


routers = [auth, me, *program_api.routers, leaders, internal]
