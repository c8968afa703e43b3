"""Delivery lists (配送单), sorting lists (分拣单), the leader receiving the goods and
redeeming pickup codes.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import select

from services.common.auth import Principal
from services.common.clock import clock
from services.common.errors import Conflict, Forbidden, NotFound
from services.common.events import emit_event, kick
from services.contracts.events import OrderPickedUp, OrderReadyForPickup, PickedUpLine

from ..models import GroupOrder
from .core import SCHEMA, S, lines_of, load_order, transition


async def delivery_lists(s: AsyncSession, who: Principal, pickup_date: date) -> list[dict]:
    params: dict[str, Any] = {"p": pickup_date}
    mine = ""
    if not who.is_staff:
        if who.leader_id is None:
            raise Forbidden("delivery lists are for leaders and staff", code="wrong_role")
        mine = " AND dl.leader_id = :leader"
        params["leader"] = who.leader_id
    lists = (
        await s.execute(
            text(
                "SELECT dl.id, dl.sale_date, dl.pickup_date, dl.leader_id, dl.status FROM "
                f"orders.delivery_lists dl WHERE dl.pickup_date = :p{mine} ORDER BY dl.leader_id"
            ),
            params,
        )
    ).all()
    if not lists:
        return []
    ids = [dl.id for dl in lists]
    lines = (
        await s.execute(
            text(
                "SELECT o.delivery_list_id AS list_id, l.deal_id, l.product_id, l.product_name, "
                "sum(l.quantity - l.refunded_quantity) AS quantity FROM orders.orders o "
                "JOIN orders.order_lines l ON l.order_id = o.id WHERE o.delivery_list_id = ANY(:ids) "
                "AND l.status = 'active' GROUP BY o.delivery_list_id, l.deal_id, l.product_id, "
                "l.product_name ORDER BY l.deal_id"
            ),
            {"ids": ids},
        )
    ).all()
    orders = (
        await s.execute(
            text(
                "SELECT delivery_list_id AS list_id, id FROM orders.orders WHERE delivery_list_id = "
                "ANY(:ids) ORDER BY id"
            ),
            {"ids": ids},
        )
    ).all()
    out = {
        dl.id: {
            "id": dl.id,
            "sale_date": dl.sale_date,
            "pickup_date": dl.pickup_date,
            "leader_id": dl.leader_id,
            "status": dl.status,
            "lines": [],
            "orders": [],
        }
        for dl in lists
    }
    for line in lines:
        out[line.list_id]["lines"].append(
            {
                "deal_id": line.deal_id,
                "product_id": line.product_id,
                "product": line.product_name,
                "quantity": int(line.quantity),
            }
        )
    for o in orders:
        out[o.list_id]["orders"].append(o.id)
    return list(out.values())


async def sorting_list(s: AsyncSession, pickup_date: date) -> list[dict]:
    """分拣单: per product, how many go to which leader."""
    rows = (
        await s.execute(
            text(
                "SELECT l.deal_id, l.product_id, l.product_name, o.leader_id, "
                "sum(l.quantity - l.refunded_quantity) AS quantity FROM orders.orders o "
                "JOIN orders.order_lines l ON l.order_id = o.id WHERE o.pickup_date = :p "
                "AND o.delivery_list_id IS NOT NULL AND l.status = 'active' "
                "GROUP BY l.deal_id, l.product_id, l.product_name, o.leader_id "
                "ORDER BY l.deal_id, o.leader_id"
            ),
            {"p": pickup_date},
        )
    ).all()
    products: dict[int, dict] = {}
    for r in rows:
        p = products.setdefault(
            r.deal_id,
            {
                "deal_id": r.deal_id,
                "product_id": r.product_id,
                "product": r.product_name,
                "total_quantity": 0,
                "leaders": [],
            },
        )
        p["total_quantity"] += int(r.quantity)
        p["leaders"].append({"leader_id": r.leader_id, "quantity": int(r.quantity)})
    return list(products.values())


async def mark_delivery_received(db, list_id: int, who: Principal) -> int:
    async with db.transaction() as s:
        dl = (
            await s.execute(
                text("SELECT id, leader_id, status FROM orders.delivery_lists WHERE id = :id"),
                {"id": list_id},
            )
        ).first()
        if dl is None:
            raise NotFound(
                f"delivery list {list_id} does not exist", code="delivery_list_not_found"
            )
        if dl.leader_id != who.leader_id:
            raise Forbidden("this delivery list is another leader's", code="not_your_delivery_list")
        await s.execute(
            text(
                "UPDATE orders.delivery_lists SET status = 'received', "
                "received_at = :now WHERE id = :id AND status = 'pending'"
            ),
            {"id": list_id, "now": clock.now()},
        )
        ready = await transition(
            s,
            S.ready_for_pickup,
            "delivery_list_id = :dl",
            {"dl": list_id},
            event=lambda o: OrderReadyForPickup(order_id=o.id, leader_id=o.leader_id),
        )
    kick(db)
    return len(ready)


async def redeem_pickup(db, code: str, who: Principal) -> int:
    """The leader verifies a shopper's pickup code: usable once, only by that order's leader."""
    if who.leader_id is None:
        raise Forbidden("only leaders redeem pickup codes", code="wrong_role")
    async with db.transaction() as s:
        moved = await transition(
            s, S.picked_up, "pickup_code = :c AND leader_id = :l", {"c": code, "l": who.leader_id}
        )
        if not moved:
            order = (
                await s.execute(
                    select(GroupOrder).where(
                        GroupOrder.pickup_code == code, GroupOrder.leader_id == who.leader_id
                    )
                )
            ).scalar_one_or_none()
            if order is None:
                raise NotFound(
                    "no order of yours has this pickup code", code="pickup_code_not_found"
                )
            if order.status in (S.picked_up, S.completed):
                raise Conflict("this order was already picked up", code="already_picked_up")
            raise Conflict(
                f"this order is {order.status}, not ready for pickup", code="not_ready_for_pickup"
            )
        order = await load_order(s, moved[0].id)
        assert order.id is not None  # a stored row has its id
        lines = [ln for ln in (await lines_of(s, [order.id]))[order.id] if ln.status == "active"]
        await emit_event(
            s,
            SCHEMA,
            OrderPickedUp(
                order_id=order.id,
                shopper_id=order.shopper_id,
                leader_id=order.leader_id,
                leader_tier=order.leader_tier,
                commission_rate=order.commission_rate,
                sale_date=order.sale_date,
                picked_up_at=order.picked_up_at,
                total_fen=order.total_fen,
                refunded_fen=order.refunded_fen,
                lines=[
                    PickedUpLine(
                        line_id=ln.id,
                        deal_id=ln.deal_id,
                        base_fen=ln.unit_price_fen * ln.quantity - ln.refunded_fen,
                    )
                    for ln in lines
                ],
            ),
        )
    kick(db)
    return order.id
