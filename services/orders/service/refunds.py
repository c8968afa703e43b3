"""Refunds owed and executed: one row per (order, reason, source), paid by the provider
with an Idempotency-Key from that row, retried by beat until done.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.background import after_response
from services.common.clock import clock
from services.common.events import emit_event, kick
from services.common.payments import get_provider
from services.contracts.events import OrderRefunded

from .core import SCHEMA, log


async def _owe_refund(
    s: AsyncSession, order_id: int, reason: str, source_ref: str, amount_fen: int, lines: list[dict]
) -> bool:
    created = (
        await s.execute(
            text(
                "INSERT INTO orders.refunds (order_id, reason, source_ref, amount_fen, lines, status, "
                "attempts, created_at) VALUES (:o, :r, :src, :a, CAST(:lines AS jsonb), 'pending', 0, :now)"
                " ON CONFLICT ON CONSTRAINT uq_refunds_source DO NOTHING RETURNING id"
            ),
            {
                "o": order_id,
                "r": reason,
                "src": source_ref,
                "a": amount_fen,
                "lines": _json(lines),
                "now": clock.now(),
            },
        )
    ).scalar_one_or_none()
    return created is not None


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def refund_in_background(db) -> None:
    """Owed refunds go out after the response; the beat job retries what this misses."""
    after_response(lambda: execute_pending_refunds(db), "execute refunds")


async def execute_pending_refunds(db, limit: int = 50) -> int:
    """Send owed refunds to the provider, each with key `refund:<id>`, once."""
    provider = get_provider()
    done = 0
    while True:
        async with db.transaction() as s:
            rows = (
                await s.execute(
                    text(
                        "SELECT r.id, r.order_id, r.amount_fen, r.lines, r.reason, r.attempts, "
                        "o.payment_intent_id, o.leader_id FROM orders.refunds r JOIN orders.orders o "
                        "ON o.id = r.order_id WHERE r.status = 'pending' ORDER BY r.id LIMIT :n "
                        "FOR UPDATE OF r SKIP LOCKED"
                    ),
                    {"n": limit},
                )
            ).all()
            for r in rows:
                try:
                    refund = await provider.refund(
                        r.payment_intent_id,
                        r.amount_fen,
                        idempotency_key=f"refund:{r.id}",
                        metadata={"order_id": r.order_id, "refund_id": r.id},
                    )
                except Exception as e:  # noqa: BLE001 - provider trouble: retried later
                    status = "failed" if r.attempts + 1 >= 10 else "pending"
                    await s.execute(
                        text(
                            "UPDATE orders.refunds SET attempts = attempts + 1, last_error = :e, "
                            "status = :st WHERE id = :id"
                        ),
                        {"e": str(e)[:500], "st": status, "id": r.id},
                    )
                    log.warning("refund_failed", refund_id=r.id, error=str(e))
                    continue
                await s.execute(
                    text(
                        "UPDATE orders.refunds SET status = 'succeeded', provider_refund_id = :p, "
                        "succeeded_at = :now, attempts = attempts + 1 WHERE id = :id AND status = 'pending'"
                    ),
                    {"p": refund.id, "now": clock.now(), "id": r.id},
                )
                await emit_event(
                    s,
                    SCHEMA,
                    OrderRefunded(
                        order_id=r.order_id,
                        refund_id=r.id,
                        leader_id=r.leader_id,
                        reason=r.reason,
                        amount_fen=r.amount_fen,
                        lines=r.lines,
                    ),
                )
                done += 1
        if len(rows) < limit:
            break
    kick(db)
    return done
