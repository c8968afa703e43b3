"""The leader programme's routes: applications, deposit, training, tiers, complaints,
status, handover and growth. Included before the generic `/leaders/{id}` route.

A JWT carries the roles it was issued with: a shopper whose application is approved
signs in again to get the `leader` role (`GET /leaders/me` shows the outcome at once).
"""

from __future__ import annotations

from fastapi import APIRouter

from services.common.auth import CurrentPrincipal, Leader, Principal, Shopper, Staff
from services.common.db import get_db
from services.common.errors import Forbidden
from services.common.events import kick
from services.common.pagination import Page, PageDep, make_page
from services.common.settings import get_settings

from . import applications, deposit, service, status
from .models import ApplicationStatus, LeaderStatus
from .schemas import (
    ApplicationIn,
    ApplicationOut,
    DeductionIn,
    DepositEntryOut,
    DepositOut,
    DepositPayIn,
    DepositPaymentOut,
    DepositStartOut,
    LeaderMeOut,
    ReasonIn,
    StatusOut,
    TerminateIn,
)

db = get_db("leaders")
router = APIRouter(prefix="/leaders", tags=["leader programme"])


def _own_leader_id(who: Principal) -> int:
    if who.leader_id is None:
        raise Forbidden("sign in again after your application is approved", code="not_a_leader")
    return who.leader_id


def _may_see_leader(who: Principal, leader_id: int) -> None:
    if not (who.is_staff or who.leader_id == leader_id):
        raise Forbidden("only staff and that leader may see this", code="not_your_leader")


def _deposit_out(leader) -> DepositOut:
    return DepositOut(
        status=leader.deposit_status,
        amount_fen=get_settings().deposit_fen,
        balance_fen=leader.deposit_balance_fen,
    )


# --- applications --------------------------------------------------------------------------


@router.post("/applications", response_model=ApplicationOut, status_code=201)
async def apply(body: ApplicationIn, who: Shopper) -> ApplicationOut:
    async with db.transaction() as s:
        app = await applications.apply(s, who.user_id, body.model_dump())
        return ApplicationOut(**app.model_dump())


@router.get("/applications", response_model=Page[ApplicationOut])
async def list_applications(
    _: Staff, page: PageDep, status: ApplicationStatus | None = None
) -> Page[ApplicationOut]:
    async with db.session() as s:
        rows = await applications.list_applications(s, status, page.after_id, page.limit)
    rows, cursor = make_page(rows, page)
    return Page(items=[ApplicationOut(**r.model_dump()) for r in rows], next_cursor=cursor)


@router.post("/applications/{app_id}/approve", response_model=ApplicationOut)
async def approve(app_id: int, who: Staff) -> ApplicationOut:
    async with db.transaction() as s:
        app = await applications.approve(s, app_id, who.user_id)
        return ApplicationOut(**app.model_dump())


@router.post("/applications/{app_id}/reject", response_model=ApplicationOut)
async def reject(app_id: int, body: ReasonIn, who: Staff) -> ApplicationOut:
    async with db.transaction() as s:
        app = await applications.reject(s, app_id, who.user_id, body.reason)
        return ApplicationOut(**app.model_dump())


@router.get("/me", response_model=LeaderMeOut)
async def leader_me(who: CurrentPrincipal) -> LeaderMeOut:
    """Any signed-in user: an applicant sees their application's outcome here."""
    async with db.session() as s:
        app = await applications.latest_of_user(s, who.user_id)
        leader = await service.leader_of_user(s, who.user_id)
        out = LeaderMeOut(application=ApplicationOut(**app.model_dump()) if app else None)
        if leader is not None:
            out.id = leader.id
            out.status = leader.status
            out.tier = leader.tier
            out.commission_rate = service.rate_for(leader.tier)
            out.deposit = _deposit_out(leader)
            out.onboarding_done = leader.onboarding_done
            out.invite_code = leader.invite_code
            out.tier_progress = await service.tier_progress(s, leader)
    return out


# --- deposit -------------------------------------------------------------------------------


@router.post("/me/deposit", response_model=DepositStartOut)
async def pay_deposit(who: Leader, body: DepositPayIn | None = None) -> DepositStartOut:
    method = body.payment_method if body else None
    leader = await deposit.start_payment(db, _own_leader_id(who), method)
    kick(db)
    paid = leader.deposit_status != "unpaid"
    return DepositStartOut(
        payment=DepositPaymentOut(
            intent_id=leader.deposit_intent_id,
            status="succeeded" if paid else "requires_payment",
            amount_fen=get_settings().deposit_fen,
            currency=get_settings().currency,
        ),
        deposit=_deposit_out(leader),
    )


async def _history(leader_id: int, page) -> Page[DepositEntryOut]:
    async with db.session() as s:
        await service.get_leader(s, leader_id)
        rows = await deposit.history(s, leader_id, page.after_id, page.limit)
    rows, cursor = make_page(rows, page)
    return Page(items=[DepositEntryOut(**r.model_dump()) for r in rows], next_cursor=cursor)


@router.get("/me/deposit/history", response_model=Page[DepositEntryOut])
async def my_deposit_history(who: Leader, page: PageDep) -> Page[DepositEntryOut]:
    return await _history(_own_leader_id(who), page)


@router.get("/{leader_id}/deposit/history", response_model=Page[DepositEntryOut])
async def deposit_history(
    leader_id: int, who: CurrentPrincipal, page: PageDep
) -> Page[DepositEntryOut]:
    _may_see_leader(who, leader_id)
    return await _history(leader_id, page)


@router.post("/{leader_id}/deposit/deductions", response_model=DepositOut, status_code=201)
async def deduct(leader_id: int, body: DeductionIn, who: Staff) -> DepositOut:
    async with db.transaction() as s:
        await deposit.deduct(s, leader_id, body.amount_fen, body.reason, who.user_id)
    async with db.session() as s:
        return _deposit_out(await service.get_leader(s, leader_id))


@router.post("/{leader_id}/deposit/refund", response_model=DepositOut)
async def refund_deposit(leader_id: int, who: Staff) -> DepositOut:
    """Retry a refund that a provider outage left `refunding` (terminate starts it)."""
    await deposit.refund(db, leader_id, who.user_id)
    async with db.session() as s:
        return _deposit_out(await service.get_leader(s, leader_id))


# --- status --------------------------------------------------------------------------------


async def _status_out(leader_id: int) -> StatusOut:
    async with db.session() as s:
        leader = await service.get_leader(s, leader_id)
    return StatusOut(
        id=leader.id, status=leader.status, tier=leader.tier, deposit=_deposit_out(leader)
    )


async def _move(leader_id: int, to: LeaderStatus, reason: str, who: Principal) -> None:
    async with db.transaction() as s:
        await status.change_or_refuse(s, leader_id, to, reason, who.user_id)
    kick(db)


@router.post("/{leader_id}/suspend", response_model=StatusOut)
async def suspend(leader_id: int, body: ReasonIn, who: Staff) -> StatusOut:
    await _move(leader_id, LeaderStatus.suspended, body.reason, who)
    return await _status_out(leader_id)


@router.post("/{leader_id}/reinstate", response_model=StatusOut)
async def reinstate(leader_id: int, body: ReasonIn, who: Staff) -> StatusOut:
    await _move(leader_id, LeaderStatus.active, body.reason, who)
    return await _status_out(leader_id)


@router.post("/{leader_id}/terminate", response_model=StatusOut)
async def terminate(leader_id: int, body: TerminateIn, who: Staff) -> StatusOut:
    await _move(leader_id, LeaderStatus.terminated, body.reason, who)
    if body.good_standing:
        async with db.session() as s:
            leader = await service.get_leader(s, leader_id)
        if leader.deposit_status in ("paid", "refunding"):
            await deposit.refund(db, leader_id, who.user_id)
    return await _status_out(leader_id)


routers = [router]
