"""The order kernel: the one way a status changes (`transition`), the peers asked
synchronously, reading orders and who may read them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from services.common.auth import Principal
from services.common.clock import clock
from services.common.errors import Conflict, Forbidden, NotFound
from services.common.events import emit_events
from services.common.http import ServiceClient
from services.contracts.events import Event

from ..models import GroupOrder, OrderLine, OrderStatus

log = structlog.get_logger()
SCHEMA = "orders"
catalog_client = ServiceClient("catalog")
leaders_client = ServiceClient("leaders")
# a peer call whose outcome is unknown (connection cut, answer lost) is asked again this
# many times when the peer makes it idempotent
PEER_RETRIES = 3

S = OrderStatus
# The lifecycle (DOMAIN.md "Group orders"): target status -> statuses it may come from.
TRANSITIONS: dict[OrderStatus, tuple[OrderStatus, ...]] = {
    S.paid: (S.pending_payment,),
    S.confirmed: (S.paid,),
    S.ready_for_pickup: (S.confirmed,),
    S.picked_up: (S.ready_for_pickup,),
    S.completed: (S.picked_up,),
    S.cancelled: (S.pending_payment, S.paid),
}
_STAMP = {
    S.paid: "paid_at",
    S.confirmed: "confirmed_at",
    S.ready_for_pickup: "ready_at",
    S.picked_up: "picked_up_at",
    S.completed: "completed_at",
    S.cancelled: "cancelled_at",
}


class OrderNotFound(NotFound):
    code = "order_not_found"


class NotYourOrder(Forbidden):
    code = "not_your_order"


class LeaderSuspended(Conflict):
    code = "leader_suspended"


class OrderNotPayable(Conflict):
    code = "order_not_payable"


async def transition(
    s: AsyncSession,
    to: OrderStatus,
    where: str,
    params: dict[str, Any],
    extra_set: str = "",
    event: Callable[[Any], Event] | None = None,
) -> list[Any]:
    """Move every order matching `where` (and an allowed from-status) to `to`.

    Each moved row has the columns below, `stamped_at` being the time of the move. With
    `event`, one outbox event per moved order is built from its row and written with one
    more statement, however many orders moved (a cutoff moves 100,000).
    """
    allowed = ", ".join(f"'{f.value}'" for f in TRANSITIONS[to])
    sets = f"status = '{to.value}', {_STAMP[to]} = :now" + (f", {extra_set}" if extra_set else "")
    update = (
        f"UPDATE {SCHEMA}.orders SET {sets} WHERE status IN ({allowed}) AND ({where}) "
        "RETURNING id, shopper_id, leader_id, sale_date, total_fen, refunded_fen, "
        f"{_STAMP[to]} AS stamped_at"
    )
    now = clock.now()
    rows = list((await s.execute(text(update), {"now": now, **params})).all())
    if event is not None:
        await emit_events(s, SCHEMA, [event(row) for row in rows], at=now)
    return rows


async def load_order(s: AsyncSession, order_id: int, *, lock: bool = False) -> GroupOrder:
    q = select(GroupOrder).where(GroupOrder.id == order_id)
    if lock:
        q = q.with_for_update()
    order = (await s.execute(q)).scalar_one_or_none()
    if order is None:
        raise OrderNotFound(f"order {order_id} does not exist")
    return order


def authorize_read(order: GroupOrder, who: Principal) -> None:
    if who.is_staff or order.shopper_id == who.user_id:
        return
    if who.leader_id is not None and order.leader_id == who.leader_id:
        return
    raise NotYourOrder("this order is not yours")


async def lines_of(s: AsyncSession, order_ids: list[int]) -> dict[int, list[OrderLine]]:
    out: dict[int, list[OrderLine]] = {i: [] for i in order_ids}
    if not order_ids:
        return out
    rows = (
        await s.execute(
            select(OrderLine)
            .where(col(OrderLine.order_id).in_(order_ids))
            .order_by(col(OrderLine.id))
        )
    ).scalars()
    for line in rows:
        out[line.order_id].append(line)
    return out


async def existing_order_ids(s: AsyncSession, order_ids: list[int]) -> list[int]:
    rows = await s.execute(
        text("SELECT id FROM orders.orders WHERE id = ANY(:ids)"), {"ids": order_ids}
    )
    return list(rows.scalars())


async def list_orders(
    s: AsyncSession,
    who: Principal,
    *,
    status: str | None,
    pickup_date: date | None,
    after_id: int | None,
    limit: int,
) -> list[GroupOrder]:
    q = select(GroupOrder).order_by(col(GroupOrder.id).desc()).limit(limit + 1)
    if not who.is_staff:
        if who.has("leader") and who.leader_id is not None:
            q = q.where(GroupOrder.leader_id == who.leader_id)
        else:
            q = q.where(GroupOrder.shopper_id == who.user_id)
    if status:
        q = q.where(GroupOrder.status == status)
    if pickup_date:
        q = q.where(GroupOrder.pickup_date == pickup_date)
    if after_id:
        q = q.where(col(GroupOrder.id) < after_id)
    return list((await s.execute(q)).scalars())
