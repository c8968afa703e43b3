"""Catalog's events and jobs."""

import structlog

from services.common.celery_app import celery, run
from services.common.db import get_db
from services.common.events import Envelope, subscribe
from services.contracts.events import OrderCancelled

from . import service

log = structlog.get_logger()


@subscribe("catalog", "order.cancelled")
async def return_stock_of_cancelled_order(s, payload: dict, env: Envelope) -> None:
    await service.release_reservation(s, OrderCancelled.model_validate(payload).order_id)


@celery.task(name="catalog.close_due_sale_days")
def close_due_sale_days() -> int:
    async def job() -> int:
        db = get_db("catalog")
        async with db.session() as s:
            days = await service.days_due_for_cutoff(s)
        for day in days:
            try:
                await service.close_sale_day(db, day)
            except Exception:
                log.warning("cutoff_failed_will_retry", sale_date=str(day), exc_info=True)
        return len(days)

    return run(job())


@celery.task(name="catalog.release_orphaned_reservations")
def release_orphaned_reservations() -> int:
    return run(service.release_orphaned_reservations(get_db("catalog")))
