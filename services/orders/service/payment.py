"""Paying an order: the intent, confirming it, and the one conditional move to paid,
from `/pay` or the provider's webhook, whichever is first.
"""

from __future__ import annotations

import secrets

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.auth import Principal
from services.common.clock import clock
from services.common.events import emit_event, kick
from services.common.payments import PaymentDeclined, get_provider
from services.contracts.events import DepositPaymentSucceeded, OrderPaid

from .core import SCHEMA, NotYourOrder, OrderNotPayable, S, load_order, log, transition
from .refunds import _json, _owe_refund, execute_pending_refunds


async def pay_order(
    db, order_id: int, who: Principal, payment_method: str | None, card: dict | None
) -> None:
    provider = get_provider()
    async with db.read() as s:  # one statement; every later step re-checks the status
        order = await load_order(s, order_id)
    if order.shopper_id != who.user_id:
        raise NotYourOrder("this order is not yours")
    if order.status != S.pending_payment:
        if order.status == S.cancelled:
            code = (
                "order_expired"
                if order.cancel_reason in ("expired", "unpaid_at_cutoff")
                else "order_cancelled"
            )
            raise OrderNotPayable(
                f"order {order_id} was cancelled ({order.cancel_reason})", code=code
            )
        return  # already paid: paying again is a no-op, never a second charge
    if clock.now() >= order.expires_at:
        raise OrderNotPayable("the reservation has expired", code="order_expired")

    intent_id = order.payment_intent_id
    if intent_id is None:
        intent_id = await provider.open_intent(
            f"order:{order_id}", order.total_fen, {"kind": "order", "order_id": order_id}
        )
    async with db.transaction() as s:
        # one statement: keep the first intent stored (a concurrent /pay may have won) and
        # count this attempt, only while the order still waits for its money
        row = (
            await s.execute(
                text(
                    "UPDATE orders.orders SET pay_attempts = pay_attempts + 1, "
                    "payment_intent_id = coalesce(payment_intent_id, :pi) WHERE id = :id AND "
                    "status = 'pending_payment' RETURNING payment_intent_id, pay_attempts"
                ),
                {"pi": intent_id, "id": order_id},
            )
        ).one_or_none()
    if row is None:
        return
    intent_id, attempt = row
    try:
        intent = await provider.pay_once(
            f"order:{order_id}", intent_id, attempt, payment_method, card
        )
    except PaymentDeclined:
        log.info("payment_declined", order_id=order_id)
        raise
    if intent.succeeded:
        await record_payment(db, order_id, intent.id, intent.amount_fen)


def new_pickup_code() -> str:
    """12 random digits (~40 bits): unguessable under the redemption rate limit."""
    return f"{secrets.randbelow(10**12):012d}"


async def record_payment(db, order_id: int, intent_id: str, amount_fen: int) -> bool:
    """The one place an order becomes paid, from `/pay` or the webhook, whichever is first."""
    async with db.transaction() as s:
        outcome = await _record_payment(s, order_id, intent_id, amount_fen)
    if outcome == PAID:
        kick(db)
    elif outcome == REFUND_OWED:
        await execute_pending_refunds(db)  # a late payment is returned without waiting
    return outcome == PAID


PAID, ALREADY_PAID, REFUND_OWED = "paid", "already_paid", "refund_owed"


async def _record_payment(s: AsyncSession, order_id: int, intent_id: str, amount_fen: int) -> str:
    """If the order was cancelled meanwhile (expired, cutoff), the money goes back.

    The second of `/pay` and the webhook finds the order paid and does nothing more."""
    moved = await transition(
        s,
        S.paid,
        "id = :id AND payment_intent_id = :pi AND total_fen = :amount",
        {"id": order_id, "pi": intent_id, "amount": amount_fen, "code": new_pickup_code()},
        "pickup_code = :code",
    )
    if moved:
        row = moved[0]
        await emit_event(
            s,
            SCHEMA,
            OrderPaid(
                order_id=order_id,
                shopper_id=row.shopper_id,
                leader_id=row.leader_id,
                sale_date=row.sale_date,
                total_fen=row.total_fen,
            ),
        )
        return PAID
    order = await load_order(s, order_id)
    if order.status == S.cancelled and order.payment_intent_id == intent_id:
        await _owe_refund(s, order_id, "late_payment", intent_id, amount_fen, [])
        log.warning("payment_after_cancel_refunded", order_id=order_id)
        return REFUND_OWED
    return ALREADY_PAID


async def handle_provider_event(db, event: dict) -> bool:
    """Store the verified event and act on it in one transaction; a redelivery is
    acknowledged and ignored."""
    obj = (event.get("data") or {}).get("object") or {}
    meta = obj.get("metadata") or {}
    async with db.transaction() as s:
        fresh = (
            await s.execute(
                text(
                    "INSERT INTO orders.payment_events (id, type, payload, received_at) VALUES "
                    "(:id, :t, CAST(:p AS jsonb), :now) ON CONFLICT (id) DO NOTHING RETURNING id"
                ),
                {"id": event["id"], "t": event["type"], "p": _json(event), "now": clock.now()},
            )
        ).scalar_one_or_none()
        if fresh is None:
            return False
        outcome = PAID
        if event["type"] == "payment_intent.succeeded" and meta.get("kind") == "order":
            outcome = await _record_payment(s, int(meta["order_id"]), obj["id"], int(obj["amount"]))
        elif event["type"] == "payment_intent.succeeded" and meta.get("kind") == "deposit":
            # the webhook lands here; a leader's deposit belongs to the leaders service
            await emit_event(
                s,
                SCHEMA,
                DepositPaymentSucceeded(
                    leader_id=int(meta["leader_id"]),
                    intent_id=obj["id"],
                    amount_fen=int(obj["amount"]),
                ),
            )
    kick(db)
    if outcome == REFUND_OWED:
        await execute_pending_refunds(db)
    return True
