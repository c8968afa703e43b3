"""The Celery app: event fan-out and consumption, outbox sweeps, scheduled jobs.

Tasks are acknowledged late and re-queued when a worker dies, so a SIGKILL mid-task
loses nothing; every task is safe to run twice (inbox dedupe, conditional updates).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from celery import Celery
from celery.signals import worker_process_init

from .settings import SERVICES, get_settings

log = structlog.get_logger()

_settings = get_settings()

celery = Celery("groupbuy", broker=_settings.celery_broker_url)
celery.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue=_settings.celery_queue,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": 3600},
    worker_hijack_root_logger=False,
    timezone="UTC",
    imports=[f"services.{s}.tasks" for s in SERVICES],
    beat_schedule={
        "sweep-outboxes": {
            "task": "events.sweep_outboxes",
            "schedule": _settings.outbox_sweep_interval_s,
        },
        "expire-reservations": {
            "task": "orders.expire_unpaid_orders",
            "schedule": _settings.reservation_expiry_interval_s,
        },
        "close-due-sale-days": {
            "task": "catalog.close_due_sale_days",
            "schedule": _settings.cutoff_check_interval_s,
        },
        "release-orphaned-reservations": {
            "task": "catalog.release_orphaned_reservations",
            "schedule": _settings.reservation_expiry_interval_s,
        },
        "execute-refunds": {"task": "orders.execute_pending_refunds", "schedule": 30.0},
        "complete-orders": {
            "task": "orders.complete_orders_past_window",
            "schedule": _settings.completion_interval_s,
        },
        "evaluate-leader-tiers": {
            "task": "leaders.evaluate_tiers",
            "schedule": _settings.tier_evaluation_interval_s,
        },
        "release-commissions": {
            "task": "settlement.release_commissions",
            "schedule": _settings.commission_release_interval_s,
        },
        "retry-payouts": {
            "task": "settlement.retry_payouts",
            "schedule": _settings.payout_retry_interval_s,
        },
        "reconcile-payouts": {
            "task": "settlement.reconcile_daily",
            "schedule": _settings.reconciliation_interval_s,
        },
    },
)

_loop: asyncio.AbstractEventLoop | None = None


def run(coro) -> Any:
    """Run a coroutine on this worker process's own long-lived event loop."""
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
    return _loop.run_until_complete(coro)


@worker_process_init.connect
def _fresh_loop_per_child(**_: Any) -> None:
    # engines and loops made before the fork must not be shared with the parent
    global _loop
    _loop = None
    from . import db

    db._databases.clear()
    db.WORKER_POOL.update(size=_settings.worker_db_pool_size, overflow=1)


@celery.task(name="events.dispatch")
def dispatch(env: dict[str, Any]) -> int:
    from .events import subscribers_of

    subs = subscribers_of(env["topic"])
    for sub in subs:
        consume_event.apply_async(args=[sub.name, env])
    return len(subs)


@celery.task(name="events.consume", bind=True, max_retries=_settings.event_max_retries)
def consume_event(self, subscription_name: str, env: dict[str, Any]) -> bool:
    from .db import get_db
    from .events import SUBSCRIPTIONS, consume

    sub = SUBSCRIPTIONS[subscription_name]
    try:
        return run(consume(get_db(sub.service), sub, env))
    except Exception as exc:
        log.warning(
            "event_consume_failed",
            consumer=sub.name,
            event_id=env.get("id"),
            topic=env.get("topic"),
            error=str(exc),
        )
        raise self.retry(exc=exc, countdown=min(60, 2**self.request.retries)) from exc


@celery.task(name="events.sweep_outboxes")
def sweep_outboxes() -> int:
    from .db import get_db
    from .events import relay_outbox

    async def sweep() -> int:
        return sum([await relay_outbox(get_db(s)) for s in SERVICES])

    return run(sweep())
