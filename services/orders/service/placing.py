"""Placing an order (leader snapshot, stock held, order recorded; all or nothing),
cancelling an unpaid one, and expiring unpaid reservations.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.auth import Principal
from services.common.clock import clock
from services.common.errors import Conflict, PeerTimeout, PeerUnavailable
from services.common.events import emit_event, kick
from services.common.settings import get_settings
from services.contracts.events import OrderCancelled

from ..models import GroupOrder, LineStatus, OrderLine
from ..rules import reservation_expiry
from .core import (
    PEER_RETRIES,
    SCHEMA,
    LeaderSuspended,
    NotYourOrder,
    S,
    catalog_client,
    load_order,
    log,
    transition,
)
from .leaders import leader_of


class IdBlocks:
    """Order ids taken from the sequence a block at a time: one round trip per block
    instead of a transaction per order. Ids stay unique; across processes they are not
    in creation order, which nothing relies on (lists page by id, which stays unique)."""

    def __init__(self, sequence: str, size: int = 50) -> None:
        self.sequence, self.size = sequence, size
        self._ids: list[int] = []
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def next(self, db) -> int:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._lock, self._loop, self._ids = asyncio.Lock(), loop, []
        assert self._lock is not None
        async with self._lock:
            if not self._ids:
                async with db.session() as s:
                    rows = await s.execute(
                        text(f"SELECT nextval('{self.sequence}') FROM generate_series(1, :n)"),
                        {"n": self.size},
                    )
                    self._ids = sorted((r[0] for r in rows), reverse=True)
            return self._ids.pop()


order_id_blocks = IdBlocks("orders.orders_id_seq")


async def place_order(db, who: Principal, items: list[dict]) -> tuple[dict, list[dict]]:
    """Snapshot the leader and prices, hold stock, record the order; all or nothing.

    Returns the rows as inserted, so the caller need not read them back."""

    # the leader lookup and the id are independent: one round trip's wait, not two
    leader, order_id = await asyncio.gather(leader_of(db, who.user_id), order_id_blocks.next(db))
    if not leader["accepts_orders"]:
        raise LeaderSuspended("your leader's group is not taking orders right now")
    try:
        # keyed by the order id: asked again, the catalog answers as the first time, so
        # an answer lost after the stock was held is recovered instead of held twice
        held = await catalog_client.post(
            "/internal/reservations",
            json={"order_id": order_id, "shopper_id": who.user_id, "items": items},
            retries=PEER_RETRIES,
        )
    except (PeerUnavailable, PeerTimeout):
        # the catalog may have held stock we will never record: give it back now (the
        # client's retry gets a new order id) rather than after the orphan sweep's grace
        await _release_quietly(order_id)
        raise
    try:
        async with db.statement() as s:  # one INSERT for the order and its lines: atomic
            placed = await _insert_order(s, order_id, who.user_id, leader, held)
    except Exception:
        # the stock must not stay held for an order that was never recorded
        await _release_quietly(order_id)
        raise
    return placed


async def _release_quietly(order_id: int) -> None:
    """Best effort: what this cannot release, the catalog's orphan sweep does later."""
    try:
        await catalog_client.post(
            f"/internal/reservations/{order_id}/release", retries=PEER_RETRIES
        )
    except (PeerUnavailable, PeerTimeout):
        log.warning("reservation_release_deferred", order_id=order_id)


def _defaults(model) -> dict:
    """The model's column defaults (every column a new row does not set)."""
    return {
        name: f.get_default(call_default_factory=False)
        for name, f in model.model_fields.items()
        if not f.is_required() and f.default_factory is None
    }


# the rows as plain dicts: building SQLModel objects (instrumented attributes) for the
# answer cost 7% of the orders service's CPU per placement (bench scenario 1)
_ORDER_DEFAULTS = _defaults(GroupOrder)
_LINE_DEFAULTS = _defaults(OrderLine)


async def _insert_order(
    s: AsyncConnection, order_id: int, shopper_id: int, leader: dict, held: dict
) -> tuple[dict, list[dict]]:
    """Record the order and its lines; returns their columns as stored."""
    st = get_settings()
    now = clock.now()
    cutoff = datetime.fromisoformat(held["cutoff_at"])
    total = sum(line["unit_price_fen"] * line["quantity"] for line in held["lines"])
    order = _ORDER_DEFAULTS | {
        "id": order_id,
        "shopper_id": shopper_id,
        "leader_id": leader["leader_id"],
        "leader_tier": leader["tier"],
        # at the column's scale, so the answer built from this row reads as a stored one
        "commission_rate": Decimal(str(leader["commission_rate"])).quantize(Decimal("0.0001")),
        "sale_date": date.fromisoformat(held["sale_date"]),
        "pickup_date": date.fromisoformat(held["pickup_date"]),
        "total_fen": total,
        "currency": st.currency,
        "created_at": now,
        "expires_at": reservation_expiry(now, cutoff, st.reservation_ttl_minutes),
    }
    lines = [
        _LINE_DEFAULTS
        | {
            "order_id": order_id,
            "deal_id": line["deal_id"],
            "product_id": line["product_id"],
            "product_name": line["product_name"],
            "category": line["category"],
            "unit_price_fen": line["unit_price_fen"],
            "quantity": line["quantity"],
            "group_threshold": line["group_threshold"],
        }
        for line in held["lines"]
    ]
    # one statement for the order and its lines (the ORM's unit of work made one per row
    # and was a fifth of the orders service's CPU per placement in bench scenario 1)
    rows = (
        await s.execute(
            _INSERT_ORDER,
            {
                **{c: order[c] for c in _ORDER_COLUMNS},
                "deals": [ln["deal_id"] for ln in lines],
                "products": [ln["product_id"] for ln in lines],
                "names": [ln["product_name"] for ln in lines],
                "categories": [ln["category"] for ln in lines],
                "prices": [ln["unit_price_fen"] for ln in lines],
                "quantities": [ln["quantity"] for ln in lines],
                "thresholds": [ln["group_threshold"] for ln in lines],
                "line_status": LineStatus.active.value,
            },
        )
    ).all()
    ids = {deal_id: line_id for deal_id, line_id in rows}
    for ln in lines:
        ln["id"] = ids[ln["deal_id"]]  # the catalog answers one line per deal
    lines.sort(key=lambda ln: ln["id"])  # the order every read of an order uses
    return order, lines


_ORDER_COLUMNS = {
    "id",
    "shopper_id",
    "leader_id",
    "leader_tier",
    "commission_rate",
    "sale_date",
    "pickup_date",
    "status",
    "total_fen",
    "refunded_fen",
    "currency",
    "pay_attempts",
    "expires_at",
    "created_at",
}
_INSERT_ORDER = text(
    f"""
    WITH o AS (
        INSERT INTO {SCHEMA}.orders ({", ".join(sorted(_ORDER_COLUMNS))})
        VALUES ({", ".join(":" + c for c in sorted(_ORDER_COLUMNS))})
        RETURNING id
    )
    INSERT INTO {SCHEMA}.order_lines (order_id, deal_id, product_id, product_name, category,
        unit_price_fen, quantity, group_threshold, status, refunded_quantity, refunded_fen,
        after_sales_quantity)
    SELECT o.id, v.deal, v.product, v.name, v.category, v.price, v.quantity, v.threshold,
        :line_status, 0, 0, 0
    FROM o, unnest(CAST(:deals AS int[]), CAST(:products AS int[]), CAST(:names AS text[]),
        CAST(:categories AS text[]), CAST(:prices AS bigint[]), CAST(:quantities AS int[]),
        CAST(:thresholds AS int[])) WITH ORDINALITY AS v(deal, product, name, category, price,
        quantity, threshold, n)
    ORDER BY v.n
    RETURNING deal_id, id
    """
)


async def cancel_unpaid(db, order_id: int, who: Principal) -> None:
    async with db.transaction() as s:
        order = await load_order(s, order_id)
        if order.shopper_id != who.user_id:
            raise NotYourOrder("this order is not yours")
        moved = await transition(
            s,
            S.cancelled,
            "id = :id AND status = 'pending_payment'",
            {"id": order_id},
            "cancel_reason = 'cancelled_by_shopper'",
        )
        if not moved:
            raise Conflict(
                f"order {order_id} is {order.status}; only unpaid orders can be cancelled",
                code="order_not_cancellable",
            )
        await emit_event(
            s, SCHEMA, OrderCancelled(order_id=order_id, reason="cancelled_by_shopper")
        )
    kick(db)


async def expire_unpaid_orders(db) -> int:
    """Reservations are held 15 minutes (a setting); then the order is cancelled and the
    catalog gets its stock back through `order.cancelled`."""
    async with db.transaction() as s:
        moved = await transition(
            s,
            S.cancelled,
            "status = 'pending_payment' AND expires_at <= :now",
            {},
            "cancel_reason = 'expired'",
            event=lambda o: OrderCancelled(order_id=o.id, reason="expired"),
        )
    if moved:
        kick(db)
    return len(moved)
