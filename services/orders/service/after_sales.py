"""After-sales (售后) requests and decisions, and completion when the window closes."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from services.common.auth import Principal
from services.common.clock import clock
from services.common.errors import Conflict, Forbidden, NotFound
from services.common.events import kick
from services.common.settings import get_settings
from services.contracts.events import OrderCompleted

from ..models import AfterSalesRequest
from ..rules import after_sales_open
from .core import NotYourOrder, S, load_order, transition
from .refunds import _owe_refund, execute_pending_refunds


class AfterSalesClosed(Conflict):
    code = "after_sales_window_closed"


async def request_after_sales(
    db, order_id: int, who: Principal, lines: list[dict], reason: str
) -> int:
    """Within the window after pickup, claim some units of some lines for a refund."""
    st = get_settings()
    async with db.transaction() as s:
        order = await load_order(s, order_id)
        if order.shopper_id != who.user_id:
            raise NotYourOrder("this order is not yours")
        if order.status != S.picked_up or order.picked_up_at is None:
            raise Conflict(
                f"order {order_id} is {order.status}; after-sales starts at pickup",
                code="not_picked_up",
            )
        if not after_sales_open(order.picked_up_at, clock.now(), st.after_sales_window_hours):
            raise AfterSalesClosed(
                f"after-sales closes {st.after_sales_window_hours} h after pickup"
            )
        wanted: dict[int, int] = {}
        for line in lines:
            wanted[line["line_id"]] = wanted.get(line["line_id"], 0) + line["quantity"]
        claimed, amount = [], 0
        for line_id in sorted(wanted):
            row = (
                await s.execute(
                    text(
                        "UPDATE orders.order_lines SET after_sales_quantity = after_sales_quantity + :q "
                        "WHERE id = :id AND order_id = :o AND status = 'active' AND "
                        "after_sales_quantity + :q <= quantity RETURNING unit_price_fen"
                    ),
                    {"q": wanted[line_id], "id": line_id, "o": order_id},
                )
            ).first()
            if row is None:
                exists = (
                    await s.execute(
                        text(
                            "SELECT quantity - after_sales_quantity FROM orders.order_lines WHERE id = :id "
                            "AND order_id = :o AND status = 'active'"
                        ),
                        {"id": line_id, "o": order_id},
                    )
                ).scalar_one_or_none()
                if exists is None:
                    raise NotFound(
                        f"line {line_id} is not an active line of order {order_id}",
                        code="line_not_found",
                    )
                raise Conflict(
                    f"line {line_id} has {exists} unit(s) left to refund",
                    code="too_many_units",
                    status=422,
                )
            claimed.append(
                {
                    "line_id": line_id,
                    "quantity": wanted[line_id],
                    "amount_fen": row.unit_price_fen * wanted[line_id],
                }
            )
            amount += row.unit_price_fen * wanted[line_id]
        request = AfterSalesRequest(
            order_id=order_id,
            shopper_id=order.shopper_id,
            leader_id=order.leader_id,
            reason=reason,
            lines=claimed,
            amount_fen=amount,
            created_at=clock.now(),
        )
        s.add(request)
        await s.flush()
        assert request.id is not None  # the flush gave it its id
        return request.id


async def load_after_sales(s: AsyncSession, request_id: int) -> AfterSalesRequest:
    req = await s.get(AfterSalesRequest, request_id)
    if req is None:
        raise NotFound(
            f"after-sales request {request_id} does not exist", code="after_sales_not_found"
        )
    return req


def authorize_after_sales_decision(req: AfterSalesRequest, who: Principal) -> None:
    if who.is_staff or (who.leader_id is not None and who.leader_id == req.leader_id):
        return
    raise Forbidden(
        "only the order's leader or staff decide after-sales", code="not_your_after_sales"
    )


async def decide_after_sales(
    db, request_id: int, who: Principal, approve: bool, note: str | None
) -> AfterSalesRequest:
    """Approve: the refund is owed once (conditional status change) and executed with key
    `refund:<id>`; reject: the units are released for another request."""
    async with db.transaction() as s:
        req = await load_after_sales(s, request_id)
        authorize_after_sales_decision(req, who)
        status = "approved" if approve else "rejected"
        moved = (
            await s.execute(
                text(
                    "UPDATE orders.after_sales_requests SET status = :st, decided_by = :by, "
                    "decision_note = :note, decided_at = :now WHERE id = :id AND status = 'requested' "
                    "RETURNING id"
                ),
                {
                    "st": status,
                    "by": who.user_id,
                    "note": note,
                    "now": clock.now(),
                    "id": request_id,
                },
            )
        ).scalar_one_or_none()
        if moved is None:
            raise Conflict(
                f"after-sales request {request_id} was already {req.status}",
                code="after_sales_already_decided",
            )
        for line in req.lines:
            if approve:
                await s.execute(
                    text(
                        "UPDATE orders.order_lines SET refunded_quantity = refunded_quantity + :q, "
                        "refunded_fen = refunded_fen + :a WHERE id = :id"
                    ),
                    {"q": line["quantity"], "a": line["amount_fen"], "id": line["line_id"]},
                )
            else:
                await s.execute(
                    text(
                        "UPDATE orders.order_lines SET after_sales_quantity = after_sales_quantity - :q"
                        " WHERE id = :id"
                    ),
                    {"q": line["quantity"], "id": line["line_id"]},
                )
        if approve:
            await s.execute(
                text("UPDATE orders.orders SET refunded_fen = refunded_fen + :a WHERE id = :id"),
                {"a": req.amount_fen, "id": req.order_id},
            )
            await _owe_refund(
                s, req.order_id, "after_sales", str(req.id), req.amount_fen, req.lines
            )
        await s.refresh(req)
    if approve:
        await execute_pending_refunds(db)
    return req


async def list_after_sales(
    s: AsyncSession, who: Principal, status: str | None, after_id: int | None, limit: int
) -> list[AfterSalesRequest]:
    q = select(AfterSalesRequest).order_by(col(AfterSalesRequest.id).desc()).limit(limit + 1)
    if not who.is_staff:
        if who.leader_id is not None:
            q = q.where(AfterSalesRequest.leader_id == who.leader_id)
        else:
            q = q.where(AfterSalesRequest.shopper_id == who.user_id)
    if status:
        q = q.where(AfterSalesRequest.status == status)
    if after_id:
        q = q.where(col(AfterSalesRequest.id) < after_id)
    return list((await s.execute(q)).scalars())


async def complete_orders_past_window(db) -> int:
    """`completed` once the after-sales window has closed and no request is still open."""
    hours = get_settings().after_sales_window_hours
    async with db.transaction() as s:
        moved = await transition(
            s,
            S.completed,
            "status = 'picked_up' AND picked_up_at + make_interval(hours => :h) <= :now AND "
            "NOT EXISTS (SELECT 1 FROM orders.after_sales_requests r WHERE "
            "r.order_id = orders.orders.id AND r.status = 'requested')",
            {"h": hours},
            event=lambda o: OrderCompleted(
                order_id=o.id,
                shopper_id=o.shopper_id,
                leader_id=o.leader_id,
                total_fen=o.total_fen,
                refunded_fen=o.refunded_fen,
                completed_at=o.stamped_at,
            ),
        )
    if moved:
        kick(db)
    return len(moved)
