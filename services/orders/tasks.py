"""Orders' scheduled jobs."""

from services.common.celery_app import celery, run
from services.common.db import get_db
from services.common.events import Envelope, subscribe
from services.contracts.events import LeaderStatusChanged, LeaderTierChanged, ShopperBound

from . import service

# orders' copy of the shopper's leader and the leader's terms (service/leaders.py); an
# event from before versions were sent (no "version") is left to the copy's next change


@subscribe("orders", "shopper.bound")
async def shopper_bound(s, payload: dict, env: Envelope) -> None:
    if "version" in payload:
        e = ShopperBound.model_validate(payload)
        await service.apply_leader_copy(
            s, [{"shopper_id": e.shopper_id, "leader_id": e.leader_id, "version": e.version}], []
        )


def _terms(e: LeaderStatusChanged | LeaderTierChanged) -> dict:
    return {"leader_id": e.leader_id, "status": e.status, "tier": e.tier, "version": e.version}


@subscribe("orders", "leader.status_changed")
async def leader_status_changed(s, payload: dict, env: Envelope) -> None:
    if "version" in payload:
        await service.apply_leader_copy(
            s, [], [_terms(LeaderStatusChanged.model_validate(payload))]
        )


@subscribe("orders", "leader.tier_changed")
async def leader_tier_changed(s, payload: dict, env: Envelope) -> None:
    if "version" in payload:
        await service.apply_leader_copy(s, [], [_terms(LeaderTierChanged.model_validate(payload))])


@celery.task(name="orders.expire_unpaid_orders")
def expire_unpaid_orders() -> int:
    return run(service.expire_unpaid_orders(get_db("orders")))


@celery.task(name="orders.execute_pending_refunds")
def execute_pending_refunds() -> int:
    return run(service.execute_pending_refunds(get_db("orders")))


@celery.task(name="orders.complete_orders_past_window")
def complete_orders_past_window() -> int:
    return run(service.complete_orders_past_window(get_db("orders")))
