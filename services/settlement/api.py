"""Settlement routes."""

from fastapi import APIRouter

from services.common.auth import Leader
from services.common.db import get_db
from services.common.pagination import Page, PageDep, make_page

from . import service
from .schemas import BalanceOut, CommissionOut

db = get_db("settlement")
router = APIRouter(prefix="/settlement", tags=["settlement"])


@router.get("/me/balance", response_model=BalanceOut)
async def my_balance(who: Leader) -> BalanceOut:
    async with db.session() as s:
        return BalanceOut(**await service.balance_of(s, who.leader_id))


@router.get("/me/commissions", response_model=Page[CommissionOut])
async def my_commissions(who: Leader, page: PageDep) -> Page[CommissionOut]:
    async with db.session() as s:
        rows = await service.commissions_of(s, who.leader_id, page.after_id, page.limit)
    rows, cursor = make_page(rows, page)
    return Page(
        items=[CommissionOut(**c.model_dump(), line_id=c.order_line_id) for c in rows],
        next_cursor=cursor,
    )


routers = [router]
