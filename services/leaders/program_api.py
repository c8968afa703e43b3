"""The leader programme's routes: applications, deposit, training, tiers, complaints,
status, handover and growth. Included before the generic `/leaders/{id}` route.

A JWT carries the roles it was issued with: a shopper whose application is approved
signs in again to get the `leader` role (`GET /leaders/me` shows the outcome at once).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from services.common.auth import CurrentPrincipal, Leader, Principal, Shopper, Staff
from services.common.bounds import DB_INT_MAX, PathId
from services.common.clock import local_today
from services.common.db import get_db
from services.common.errors import Forbidden, InvalidInput
from services.common.events import kick
from services.common.pagination import Page, PageDep, make_page
from services.common.settings import get_settings

from . import applications, deposit, evaluation, program, projection, service, status
from .models import ApplicationStatus, LeaderStatus
from .schemas import (
    ApplicationIn,
    ApplicationOut,
    AttendanceIn,
    AttendanceOut,
    ComplaintIn,
    ComplaintOut,
    DashboardOut,
    DeductionIn,
    DepositEntryOut,
    DepositOut,
    DepositPayIn,
    DepositPaymentOut,
    DepositStartOut,
    EvaluationRunIn,
    EvaluationRunOut,
    HandoverIn,
    HandoverOut,
    InviteOut,
    JoinIn,
    LeaderMeOut,
    ReasonIn,
    ResolveIn,
    SessionIn,
    StatusOut,
    TerminateIn,
    TierChangeOut,
    TrainingSessionOut,
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
async def approve(app_id: PathId, who: Staff) -> ApplicationOut:
    """Creates the leader (tier `preparation`, status `active`, an empty group). A token
    carries the roles it was issued with: the applicant signs in again
    (`POST /auth/wechat/session`) to get the `leader` role and `leader_id`."""
    async with db.transaction() as s:
        app = await applications.approve(s, app_id, who.user_id)
        return ApplicationOut(**app.model_dump())


@router.post("/applications/{app_id}/reject", response_model=ApplicationOut)
async def reject(app_id: PathId, body: ReasonIn, who: Staff) -> ApplicationOut:
    async with db.transaction() as s:
        app = await applications.reject(s, app_id, who.user_id, body.reason)
        return ApplicationOut(**app.model_dump())


@router.get("/me", response_model=LeaderMeOut)
async def leader_me(who: CurrentPrincipal) -> LeaderMeOut:
    """Any signed-in user. An applicant sees their latest application's outcome here
    (`application.status`, `application.reason`); once approved, the leader fields are
    filled at once, but leader-only routes need a new sign-in to get the `leader` role.
    `tier_progress` shows this window's metrics against the next tier's bar."""
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
            out.tier_progress = await evaluation.progress(s, leader)
    return out


# --- deposit -------------------------------------------------------------------------------


@router.post("/me/deposit", response_model=DepositStartOut)
async def pay_deposit(who: Leader, body: DepositPayIn | None = None) -> DepositStartOut:
    """Starts the deposit's one payment intent (the same one however often called);
    with `{payment_method}` it also confirms server-side. The provider's webhook confirms
    it too; either way the deposit is paid once."""
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
    leader_id: PathId, who: CurrentPrincipal, page: PageDep
) -> Page[DepositEntryOut]:
    _may_see_leader(who, leader_id)
    return await _history(leader_id, page)


@router.post("/{leader_id}/deposit/deductions", response_model=DepositOut, status_code=201)
async def deduct(leader_id: PathId, body: DeductionIn, who: Staff) -> DepositOut:
    async with db.transaction() as s:
        await deposit.deduct(s, leader_id, body.amount_fen, body.reason, who.user_id)
    async with db.session() as s:
        return _deposit_out(await service.get_leader(s, leader_id))


@router.post("/{leader_id}/deposit/refund", response_model=DepositOut)
async def refund_deposit(leader_id: PathId, who: Staff) -> DepositOut:
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
    await projection.push(db, leaders=[leader_id])  # the group's next order sees it


@router.post("/{leader_id}/suspend", response_model=StatusOut)
async def suspend(leader_id: PathId, body: ReasonIn, who: Staff) -> StatusOut:
    await _move(leader_id, LeaderStatus.suspended, body.reason, who)
    return await _status_out(leader_id)


@router.post("/{leader_id}/reinstate", response_model=StatusOut)
async def reinstate(leader_id: PathId, body: ReasonIn, who: Staff) -> StatusOut:
    await _move(leader_id, LeaderStatus.active, body.reason, who)
    return await _status_out(leader_id)


@router.post("/{leader_id}/terminate", response_model=StatusOut)
async def terminate(leader_id: PathId, body: TerminateIn, who: Staff) -> StatusOut:
    await _move(leader_id, LeaderStatus.terminated, body.reason, who)
    if body.good_standing:
        async with db.session() as s:
            leader = await service.get_leader(s, leader_id)
        if leader.deposit_status in ("paid", "refunding"):
            await deposit.refund(db, leader_id, who.user_id)
    return await _status_out(leader_id)


# --- training ------------------------------------------------------------------------------


@router.post("/training/sessions", response_model=TrainingSessionOut, status_code=201)
async def create_session(body: SessionIn, who: Staff) -> TrainingSessionOut:
    async with db.transaction() as s:
        session = await program.create_session(
            s, body.kind, body.topic, body.starts_at, who.user_id
        )
        return TrainingSessionOut(**session.model_dump())


@router.get("/training/sessions", response_model=Page[TrainingSessionOut])
async def list_sessions(_: CurrentPrincipal, page: PageDep) -> Page[TrainingSessionOut]:
    async with db.session() as s:
        rows = await program.list_sessions(s, page.after_id, page.limit)
    rows, cursor = make_page(rows, page)
    return Page(items=[TrainingSessionOut(**r._mapping) for r in rows], next_cursor=cursor)


@router.post("/training/sessions/{session_id}/attendance", response_model=AttendanceOut)
async def attendance(session_id: PathId, body: AttendanceIn, who: Staff) -> AttendanceOut:
    async with db.transaction() as s:
        added = await program.record_attendance(s, session_id, body.leader_ids, who.user_id)
    return AttendanceOut(session_id=session_id, recorded=added)


# --- complaints ----------------------------------------------------------------------------


def _complaint_out(c) -> ComplaintOut:
    data = c.model_dump() if hasattr(c, "model_dump") else dict(c._mapping)
    return ComplaintOut(**data)


@router.post("/complaints", response_model=ComplaintOut, status_code=201)
async def file_complaint(body: ComplaintIn, who: Shopper) -> ComplaintOut:
    async with db.transaction() as s:
        c = await program.file_complaint(s, who.user_id, body.leader_id, body.order_id, body.reason)
        return _complaint_out(c)


@router.get("/complaints", response_model=Page[ComplaintOut])
async def list_complaints(
    who: CurrentPrincipal,
    page: PageDep,
    status: Annotated[str | None, Query(pattern="^(open|upheld|dismissed)$")] = None,
    leader_id: Annotated[int | None, Query(gt=0, le=DB_INT_MAX)] = None,
) -> Page[ComplaintOut]:
    """Staff: all (filter by leader); a leader: the complaints against them."""
    if not who.is_staff:
        if who.leader_id is None:
            raise Forbidden("for staff and leaders", code="wrong_role")
        leader_id = who.leader_id
    async with db.session() as s:
        rows = await program.list_complaints(
            s, leader_id=leader_id, status_=status, after_id=page.after_id, limit=page.limit
        )
    rows, cursor = make_page(rows, page)
    return Page(items=[_complaint_out(r) for r in rows], next_cursor=cursor)


@router.post("/complaints/{complaint_id}/resolve", response_model=ComplaintOut)
async def resolve_complaint(complaint_id: PathId, body: ResolveIn, who: Staff) -> ComplaintOut:
    async with db.transaction() as s:
        c = await program.resolve_complaint(s, complaint_id, body.upheld, body.note, who.user_id)
        out = _complaint_out(c)
    kick(db)
    if body.upheld:  # it may have suspended the leader
        await projection.push(db, leaders=[out.leader_id])
    return out


# --- tiers ---------------------------------------------------------------------------------


@router.post("/evaluations/run", response_model=EvaluationRunOut)
async def run_evaluations(who: Staff, body: EvaluationRunIn | None = None) -> EvaluationRunOut:
    changes = await evaluation.run_evaluations(db, body.leader_ids if body else None)
    kick(db)
    # the new rates apply to the next orders (the beat's daily run relies on the events)
    await projection.push(db, leaders=[c["leader_id"] for c in changes])
    return EvaluationRunOut(changes=[TierChangeOut(**c) for c in changes])


@router.get("/{leader_id}/tier-history", response_model=Page[TierChangeOut])
async def tier_history(
    leader_id: PathId, who: CurrentPrincipal, page: PageDep
) -> Page[TierChangeOut]:
    _may_see_leader(who, leader_id)
    async with db.session() as s:
        await service.get_leader(s, leader_id)
        rows = await evaluation.tier_history(s, leader_id, page.after_id, page.limit)
    rows, cursor = make_page(rows, page)
    st = get_settings()
    return Page(
        items=[
            TierChangeOut(**r._mapping, commission_rate=st.rate_for_tier(r.to_tier)) for r in rows
        ],
        next_cursor=cursor,
    )


# --- handover and growth -------------------------------------------------------------------


@router.post("/{leader_id}/handover", response_model=HandoverOut)
async def handover(leader_id: PathId, body: HandoverIn, who: Staff) -> HandoverOut:
    async with db.transaction() as s:
        moved = await program.handover(s, leader_id, body.to_leader_id, body.reason, who.user_id)
    kick(db)
    await projection.push(db, shoppers=moved)
    return HandoverOut(
        from_leader_id=leader_id, to_leader_id=body.to_leader_id, shoppers_moved=len(moved)
    )


@router.get("/me/invite", response_model=InviteOut)
async def my_invite(who: Leader) -> InviteOut:
    async with db.transaction() as s:
        code = await program.invite_code_of(s, _own_leader_id(who))
    return InviteOut(invite_code=code, share_link=f"{get_settings().share_link_base}{code}")


@router.post("/join", response_model=InviteOut)
async def join(body: JoinIn, who: Shopper) -> InviteOut:
    """A shopper who opened a leader's share link joins that leader's group."""
    async with db.transaction() as s:
        leader_id = await program.leader_by_invite(s, body.invite_code)
        await service.bind_shopper(s, who.user_id, leader_id)
    kick(db)
    await projection.push(db, shoppers=[who.user_id])
    code = body.invite_code.upper()
    return InviteOut(invite_code=code, share_link=f"{get_settings().share_link_base}{code}")


@router.get("/me/dashboard", response_model=DashboardOut)
async def my_dashboard(
    who: Leader,
    from_: Annotated[date | None, Query(alias="from")] = None,
    to: date | None = None,
) -> DashboardOut:
    """Defaults to the last `tier_window_days` days, today included."""
    st = get_settings()
    end = to or local_today(st.timezone)
    start = from_ or end - timedelta(days=st.tier_window_days - 1)
    if start > end or (end - start).days > 366:
        raise InvalidInput("from must be before to, at most a year apart", code="invalid_period")
    async with db.session() as s:
        return DashboardOut(**await program.dashboard(s, _own_leader_id(who), start, end))


routers = [router]
