"""The worker and beat: the kernel's Celery app with every service's tasks and event
consumers, and the schedule of jobs. Both processes start on it:

    celery -A services.platform.worker:celery worker ...
    celery -A services.platform.worker:celery beat ...

(`groupbuy serve worker|beat` and `make run` do.) The kernel's own tasks (event fan-out,
the outbox sweep) come with `services.common.celery_app`.
"""

from __future__ import annotations

from typing import Any

from services.catalog import tasks as catalog_tasks
from services.common.celery_app import celery
from services.common.settings import Settings, get_settings
from services.leaders import tasks as leaders_tasks
from services.orders import tasks as orders_tasks
from services.settlement import tasks as settlement_tasks

__all__ = ["TASK_MODULES", "celery", "schedule"]

# imported for what they register: each service's tasks and its event subscriptions
TASK_MODULES = (catalog_tasks, orders_tasks, leaders_tasks, settlement_tasks)


def schedule(st: Settings) -> dict[str, dict[str, Any]]:
    """Beat's jobs, each at the interval its setting names."""
    return {
        "sweep-outboxes": {
            "task": "events.sweep_outboxes",
            "schedule": st.outbox_sweep_interval_s,
        },
        "expire-reservations": {
            "task": "orders.expire_unpaid_orders",
            "schedule": st.reservation_expiry_interval_s,
        },
        "close-due-sale-days": {
            "task": "catalog.close_due_sale_days",
            "schedule": st.cutoff_check_interval_s,
        },
        "release-orphaned-reservations": {
            "task": "catalog.release_orphaned_reservations",
            "schedule": st.reservation_expiry_interval_s,
        },
        "execute-refunds": {
            "task": "orders.execute_pending_refunds",
            "schedule": st.refund_retry_interval_s,
        },
        "complete-orders": {
            "task": "orders.complete_orders_past_window",
            "schedule": st.completion_interval_s,
        },
        "evaluate-leader-tiers": {
            "task": "leaders.evaluate_tiers",
            "schedule": st.tier_evaluation_interval_s,
        },
        "release-commissions": {
            "task": "settlement.release_commissions",
            "schedule": st.commission_release_interval_s,
        },
        "retry-payouts": {
            "task": "settlement.retry_payouts",
            "schedule": st.payout_retry_interval_s,
        },
        "reconcile-payouts": {
            "task": "settlement.reconcile_daily",
            "schedule": st.reconciliation_interval_s,
        },
    }


# read with the rest of the app's configuration, when first needed (services.common.broker)
celery.add_defaults(lambda: {"beat_schedule": schedule(get_settings())})
