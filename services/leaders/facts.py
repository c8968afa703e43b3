"""Our projection of order facts, fed by the orders service's events. Events may arrive
in any order and more than once (the inbox dedupes per event), so every write is an
upsert that only fills in or moves forward."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.events import Envelope, occurred_at
from services.contracts.events import (
    OrderCancelled,
    OrderCompleted,
    OrderPaid,
    OrderPickedUp,
    OrderRefunded,
)

UPSERT = """
INSERT INTO leaders.order_facts (order_id, leader_id, shopper_id, total_fen, refunded_fen,
    sale_date, paid_at, picked_up_at, completed_at, cancelled_at)
VALUES (:o, :leader, :shopper, COALESCE(:total, 0), COALESCE(:refunded, 0), :sale_date,
    :paid_at, :picked_up_at, :completed_at, :cancelled_at)
ON CONFLICT (order_id) DO UPDATE SET
    leader_id = COALESCE(EXCLUDED.leader_id, order_facts.leader_id),
    shopper_id = COALESCE(EXCLUDED.shopper_id, order_facts.shopper_id),
    total_fen = CASE WHEN :total IS NULL THEN order_facts.total_fen ELSE EXCLUDED.total_fen END,
    refunded_fen = GREATEST(order_facts.refunded_fen, EXCLUDED.refunded_fen),
    sale_date = COALESCE(EXCLUDED.sale_date, order_facts.sale_date),
    paid_at = COALESCE(order_facts.paid_at, EXCLUDED.paid_at),
    picked_up_at = COALESCE(order_facts.picked_up_at, EXCLUDED.picked_up_at),
    completed_at = COALESCE(order_facts.completed_at, EXCLUDED.completed_at),
    cancelled_at = COALESCE(order_facts.cancelled_at, EXCLUDED.cancelled_at)
"""


async def upsert(s: AsyncSession, order_id: int, **fields: Any) -> None:
    params = {
        "o": order_id,
        "leader": None,
        "shopper": None,
        "total": None,
        "refunded": None,
        "sale_date": None,
        "paid_at": None,
        "picked_up_at": None,
        "completed_at": None,
        "cancelled_at": None,
    }
    params.update(fields)
    await s.execute(text(UPSERT), params)


async def on_paid(s: AsyncSession, e: OrderPaid, env: Envelope) -> None:
    await upsert(
        s,
        e.order_id,
        leader=e.leader_id,
        shopper=e.shopper_id,
        total=e.total_fen,
        sale_date=e.sale_date,
        paid_at=occurred_at(env),
    )


async def on_picked_up(s: AsyncSession, e: OrderPickedUp, env: Envelope) -> None:
    await upsert(
        s,
        e.order_id,
        leader=e.leader_id,
        shopper=e.shopper_id,
        total=e.total_fen,
        refunded=e.refunded_fen,
        sale_date=e.sale_date,
        picked_up_at=e.picked_up_at,
    )


async def on_completed(s: AsyncSession, e: OrderCompleted, env: Envelope) -> None:
    await upsert(
        s,
        e.order_id,
        leader=e.leader_id,
        shopper=e.shopper_id,
        total=e.total_fen,
        refunded=e.refunded_fen,
        completed_at=e.completed_at,
    )


async def on_cancelled(s: AsyncSession, e: OrderCancelled, env: Envelope) -> None:
    await upsert(s, e.order_id, cancelled_at=occurred_at(env))


async def on_refunded(s: AsyncSession, e: OrderRefunded, env: Envelope) -> None:
    await upsert(s, e.order_id, leader=e.leader_id)
    await s.execute(
        text(
            "INSERT INTO leaders.refund_facts (refund_id, order_id, amount_fen, refunded_at) "
            "VALUES (:r, :o, :a, :at) ON CONFLICT (refund_id) DO NOTHING"
        ),
        {"r": str(e.refund_id), "o": e.order_id, "a": e.amount_fen, "at": occurred_at(env)},
    )
