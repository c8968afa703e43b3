"""Orders' scheduled jobs."""

from services.common.celery_app import celery, run
from services.common.db import get_db

from . import service


@celery.task(name="orders.expire_unpaid_orders")
def expire_unpaid_orders() -> int:
    return run(service.expire_unpaid_orders(get_db("orders")))


@celery.task(name="orders.execute_pending_refunds")
def execute_pending_refunds() -> int:
    return run(service.execute_pending_refunds(get_db("orders")))


@celery.task(name="orders.complete_orders_past_window")
def complete_orders_past_window() -> int:
    return run(service.complete_orders_past_window(get_db("orders")))
