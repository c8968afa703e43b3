"""Settlement test helpers (the platform is started, which also migrates the test database):
leaders with tokens of their own, commissions recorded through
the real consumers, and the ledger invariant checked after every test."""

from __future__ import annotations

import itertools
import random
from datetime import datetime, timedelta

import pytest

from services.common.auth import issue_token
from services.common.clock import clock
from services.common.db import get_db
from services.common.events import SUBSCRIPTIONS, consume, envelope
from services.contracts.events import Event, OrderPickedUp, OrderRefunded
from services.settlement import ledger
from tests.helpers import Api

# ids far above what the orders service hands out in the same test database
_ids = itertools.count(random.randint(10**8, 2 * 10**8) * 10)

PICKUP = "settlement:order.picked_up:record_commission_on_pickup"
REFUND = "settlement:order.refunded:claw_back_on_refund"


def next_id() -> int:
    return next(_ids)


@pytest.fixture
def sdb(platform):
    return get_db("settlement")


@pytest.fixture(autouse=True)
async def ledger_stays_consistent(platform):
    yield
    async with get_db("settlement").session() as s:
        assert await ledger.check_invariants(s) == []


def leader_api(base: str, leader_id: int) -> Api:
    return Api(base, issue_token(next_id(), ["shopper", "leader"], leader_id, "test leader"))


def pickup_envelope(
    leader_id: int,
    bases: list[int],
    *,
    due: bool = False,
    rate: str = "0.12",
    tier: str = "standard",
    picked_up_at: datetime | None = None,
) -> dict:
    """An `order.picked_up` event as orders publishes it; `due` puts the pickup past the
    after-sales window so the release job takes it."""
    at = picked_up_at or (clock.now() - (timedelta(days=8) if due else timedelta(0)))
    return _envelope(
        OrderPickedUp(
            order_id=next_id(),
            shopper_id=next_id(),
            leader_id=leader_id,
            leader_tier=tier,
            commission_rate=rate,
            sale_date=at.date(),
            picked_up_at=at,
            total_fen=sum(bases),
            refunded_fen=0,
            lines=[{"line_id": next_id(), "deal_id": 1, "base_fen": b} for b in bases],
        )
    )


def refund_envelope(
    leader_id: int, lines: list[tuple[int, int]], reason: str = "after_sales"
) -> dict:
    return _envelope(
        OrderRefunded(
            order_id=next_id(),
            refund_id=next_id(),
            leader_id=leader_id,
            reason=reason,
            amount_fen=sum(a for _, a in lines),
            lines=[{"line_id": ln, "quantity": 1, "amount_fen": a} for ln, a in lines],
        )
    )


def _envelope(event: Event) -> dict:
    """The event as orders publishes it: its model's JSON in an envelope."""
    return envelope(event.topic, event.model_dump(mode="json"), "orders")


async def deliver(env: dict) -> bool:
    """Hand an event to settlement's consumer exactly as the worker does (inbox included)."""
    # imported late: the Celery app reads its queue from the settings infra has set
    import services.settlement.tasks  # noqa: F401  (registers the consumers)

    name = PICKUP if env["topic"] == "order.picked_up" else REFUND
    return await consume(get_db("settlement"), SUBSCRIPTIONS[name], env)


async def balances(leader_id: int) -> dict:
    from services.settlement.service import balance_of

    async with get_db("settlement").session() as s:
        return await balance_of(s, leader_id)


async def earn_available(leader_id: int, commission_fen: int) -> None:
    """Give a leader `commission_fen` of available money (a released 10% commission)."""
    from services.settlement.service import release_due

    await deliver(pickup_envelope(leader_id, [commission_fen * 10], due=True, rate="0.1"))
    await release_due(get_db("settlement"))


def new_leader() -> int:
    return next_id()
