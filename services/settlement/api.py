"""Settlement routes."""

from datetime import date
from typing import Annotated, Literal, cast

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from services.common.auth import Leader, LeaderOrStaff, Staff
from services.common.bounds import PathId
from services.common.clock import clock
from services.common.db import get_db
from services.common.pagination import Page, PageDep, make_page

from . import service
from .models import Withdrawal
from .schemas import (
    BalanceOut,
    CommissionOut,
    RejectIn,
    ReleaseOut,
    WithdrawalIn,
    WithdrawalOut,
)

db = get_db("settlement")
router = APIRouter(prefix="/settlement", tags=["settlement"])

WithdrawalStatusQ = Literal["requested", "approved", "paid", "failed", "rejected"]


def _out(w: Withdrawal, now=None) -> WithdrawalOut:
    return WithdrawalOut(
        **w.model_dump(exclude={"overdue"}), overdue=service.is_overdue(w, now or clock.now())
    )


# cast(int, who.leader_id) below: a token carries the leader role only with its leader id
# (leaders' token_for), which the Principal type cannot say


@router.get("/me/balance", response_model=BalanceOut)
async def my_balance(who: Leader) -> BalanceOut:
    async with db.session() as s:
        return BalanceOut(**await service.balance_of(s, cast(int, who.leader_id)))


@router.get("/me/commissions", response_model=Page[CommissionOut])
async def my_commissions(who: Leader, page: PageDep) -> Page[CommissionOut]:
    async with db.session() as s:
        rows = await service.commissions_of(s, cast(int, who.leader_id), page.after_id, page.limit)
    rows, cursor = make_page(rows, page)
    return Page(
        items=[CommissionOut(**c.model_dump(), line_id=c.order_line_id) for c in rows],
        next_cursor=cursor,
    )


@router.get("/me/statement")
async def my_statement(
    who: Leader,
    request: Request,
    month: Annotated[str, Query(pattern=r"^\d{4}-\d{2}$")],
):
    async with db.session() as s:
        st = await service.statement(s, cast(int, who.leader_id), month)
    if "text/csv" in request.headers.get("accept", ""):
        return Response(
            service.statement_csv(st),
            media_type="text/csv; charset=utf-8",
            headers={
                "content-disposition": f'attachment; filename="statement-{month}.csv"',
            },
        )
    return st


@router.post("/withdrawals", response_model=WithdrawalOut, status_code=201)
async def request_withdrawal(body: WithdrawalIn, who: Leader) -> WithdrawalOut:
    return _out(await service.request_withdrawal(db, cast(int, who.leader_id), body.amount_fen))


@router.get("/withdrawals", response_model=Page[WithdrawalOut])
async def list_withdrawals(
    who: LeaderOrStaff, page: PageDep, status: WithdrawalStatusQ | None = None
) -> Page[WithdrawalOut]:
    # staff see everyone's; a leader (who is not staff) only their own
    leader_id = None if who.is_staff else who.leader_id
    async with db.session() as s:
        rows = await service.list_withdrawals(s, leader_id, status, page.after_id, page.limit)
    rows, cursor = make_page(rows, page)
    now = clock.now()
    return Page(items=[_out(w, now) for w in rows], next_cursor=cursor)


@router.post("/withdrawals/{withdrawal_id}/approve", response_model=WithdrawalOut)
async def approve_withdrawal(withdrawal_id: PathId, who: Staff) -> WithdrawalOut:
    return _out(await service.approve_withdrawal(db, withdrawal_id, who.user_id))


@router.post("/withdrawals/{withdrawal_id}/reject", response_model=WithdrawalOut)
async def reject_withdrawal(withdrawal_id: PathId, body: RejectIn, who: Staff) -> WithdrawalOut:
    return _out(await service.reject_withdrawal(db, withdrawal_id, who.user_id, body.reason))


@router.post("/jobs/release", response_model=ReleaseOut)
async def release_commissions(who: Staff) -> ReleaseOut:
    return ReleaseOut(released=await service.release_due(db))


@router.get("/reconciliation")
async def reconciliation(
    who: Staff,
    from_day: Annotated[date | None, Query(alias="from")] = None,
    to_day: Annotated[date | None, Query(alias="to")] = None,
) -> dict:
    return await service.reconcile(db, *service.period(from_day, to_day))


routers = [router]
