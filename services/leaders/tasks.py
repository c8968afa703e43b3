"""Events and jobs the leaders service handles."""

from services.common.celery_app import celery, run
from services.common.db import get_db
from services.common.events import Envelope, relay_outbox, subscribe
from services.contracts.events import (
    DepositPaymentSucceeded,
    OrderCancelled,
    OrderCompleted,
    OrderPaid,
    OrderPickedUp,
    OrderRefunded,
)

from . import deposit, evaluation, facts


@subscribe("leaders", "payment.deposit_succeeded")
async def deposit_paid(s, payload: dict, env: Envelope) -> None:
    e = DepositPaymentSucceeded.model_validate(payload)
    await deposit.record_payment(s, e.leader_id, e.intent_id, e.amount_fen)


@subscribe("leaders", "order.paid")
async def order_paid(s, payload: dict, env: Envelope) -> None:
    await facts.on_paid(s, OrderPaid.model_validate(payload), env)


@subscribe("leaders", "order.picked_up")
async def order_picked_up(s, payload: dict, env: Envelope) -> None:
    await facts.on_picked_up(s, OrderPickedUp.model_validate(payload), env)


@subscribe("leaders", "order.completed")
async def order_completed(s, payload: dict, env: Envelope) -> None:
    await facts.on_completed(s, OrderCompleted.model_validate(payload), env)


@subscribe("leaders", "order.cancelled")
async def order_cancelled(s, payload: dict, env: Envelope) -> None:
    await facts.on_cancelled(s, OrderCancelled.model_validate(payload), env)


@subscribe("leaders", "order.refunded")
async def order_refunded(s, payload: dict, env: Envelope) -> None:
    await facts.on_refunded(s, OrderRefunded.model_validate(payload), env)


@celery.task(name="leaders.evaluate_tiers")
def evaluate_tiers() -> int:
    db = get_db("leaders")

    async def go() -> int:
        changes = await evaluation.run_evaluations(db)
        await relay_outbox(db)
        return len(changes)

    return run(go())
