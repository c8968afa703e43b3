"""Settlement's event consumers and jobs."""

import structlog

from services.common.celery_app import celery, run
from services.common.db import get_db
from services.common.events import Envelope, subscribe
from services.contracts.events import OrderPickedUp, OrderRefunded

from . import service

log = structlog.get_logger()


@subscribe("settlement", "order.picked_up")
async def record_commission_on_pickup(s, payload: dict, env: Envelope) -> None:
    await service.record_commissions(s, OrderPickedUp.model_validate(payload))


@subscribe("settlement", "order.refunded")
async def claw_back_on_refund(s, payload: dict, env: Envelope) -> None:
    # refunds of lines that were never commissioned only leave their inbox row
    await service.apply_refund(s, OrderRefunded.model_validate(payload))


@celery.task(name="settlement.release_commissions")
def release_commissions() -> int:
    return run(service.release_due(get_db("settlement")))


@celery.task(name="settlement.retry_payouts")
def retry_payouts() -> int:
    return run(service.retry_payouts(get_db("settlement")))


async def reconcile_and_warn(db) -> dict:
    report = await service.reconcile(db, *service.period(None, None))
    if report["differences"]:
        log.warning(
            "reconciliation_differences",
            count=len(report["differences"]),
            differences=report["differences"],
            transfers=report["transfers"],
        )
    return report


@celery.task(name="settlement.reconcile_daily")
def reconcile_daily() -> int:
    return len(run(reconcile_and_warn(get_db("settlement")))["differences"])
