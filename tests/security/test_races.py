"""Races on real PostgreSQL through the real processes, repeated RACE_ROUNDS times:
the stock race (multi-line orders naming the same deals in opposite orders) and the
double-event race (one envelope delivered concurrently to a consumer)."""

from __future__ import annotations

import asyncio
import os
import uuid
from functools import partial

import pytest
from sqlalchemy import text

from services.common.db import get_db
from services.common.events import consume, envelope, subscribers_of
from services.contracts.events import OrderCancelled
from tests.helpers import bound_shopper, eventually, make_products, publish_day, unique_day

ROUNDS = int(os.environ.get("RACE_ROUNDS", "10"))
SHOPPERS = 8
TOP_UP = 6  # fewer units per round than shoppers want: the race is for the last ones


@pytest.fixture(scope="module")
async def race_day(gateway_url, world):
    ops = world["ops"]
    day = unique_day()
    a, b = await make_products(ops, 2)
    deals = await publish_day(
        ops,
        day,
        [
            {
                "product_id": p["id"],
                "group_price_fen": 500,
                "stock": TOP_UP,
                "per_shopper_limit": 10_000,
                "group_threshold": 0,
            }
            for p in (a, b)
        ],
    )
    leader_id = world["leader"].user["leader_id"]
    shoppers = [await bound_shopper(gateway_url, leader_id) for _ in range(SHOPPERS)]
    yield {"day": day, "deals": deals[:2], "shoppers": shoppers}
    for s in shoppers:
        await s.aclose()


async def _deal_state(ops, day, deal_id) -> dict:
    r = await ops.get(f"/catalog/days/{day}")
    return next(d for d in r.json()["deals"] if d["id"] == deal_id)


async def test_stock_race_never_oversells_nor_deadlocks(world, race_day):
    ops, day = world["ops"], race_day["day"]
    a, b = (d["id"] for d in race_day["deals"])
    placed = 0
    for round_no in range(ROUNDS):
        if round_no:
            for deal_id in (a, b):
                r = await ops.post(
                    f"/catalog/days/{day}/deals/{deal_id}/stock", json={"add": TOP_UP}
                )
                assert r.status_code == 200, r.text

        async def buy(i, shopper):
            lines = [{"deal_id": a, "quantity": 1}, {"deal_id": b, "quantity": 1}]
            return await shopper.post("/orders", json={"items": lines if i % 2 else lines[::-1]})

        results = await asyncio.gather(*(buy(i, s) for i, s in enumerate(race_day["shoppers"])))
        statuses = [r.status_code for r in results]
        assert all(s in (201, 409) for s in statuses), [(r.status_code, r.text) for r in results]
        won = statuses.count(201)
        assert won == TOP_UP, statuses  # every unit sold, none twice
        placed += won
        for deal_id in (a, b):
            state = await _deal_state(ops, day, deal_id)
            assert state["remaining"] == 0 and state["ordered"] == placed, state
    print(f"\nstock race: {ROUNDS} rounds x {SHOPPERS} shoppers, {placed} orders, no oversell")


async def test_one_event_delivered_concurrently_is_applied_once(world, race_day):
    """order.cancelled returns an order's stock: applied twice, it would mint stock."""
    # imported here, not at collection: it builds the Celery app from the settings, which
    # the session's infrastructure only sets up once the run starts
    import services.catalog.tasks  # noqa: F401 - registers the catalog's consumers

    ops, day = world["ops"], race_day["day"]
    deal = race_day["deals"][0]["id"]
    sub = next(s for s in subscribers_of("order.cancelled") if s.service == "catalog")
    db = get_db("catalog")
    shopper = race_day["shoppers"][0]
    for _ in range(ROUNDS):
        r = await ops.post(f"/catalog/days/{day}/deals/{deal}/stock", json={"add": 2})
        assert r.status_code == 200, r.text
        before = await _deal_state(ops, day, deal)
        r = await shopper.post("/orders", json={"items": [{"deal_id": deal, "quantity": 2}]})
        assert r.status_code == 201, r.text
        order_id = r.json()["id"]
        cancel = OrderCancelled(order_id=order_id, reason="expired")
        env = envelope(cancel.topic, cancel.model_dump(mode="json"), "orders", uuid.uuid4())
        applied = await asyncio.gather(*(consume(db, sub, env) for _ in range(6)))
        assert sorted(applied) == [False] * 5 + [True]
        after = await _deal_state(ops, day, deal)
        assert after["remaining"] == before["remaining"], (before, after)
        # the shopper's own cancel publishes a second, different event for the same order
        answer = await shopper.post(f"/orders/{order_id}/cancel")
        assert answer.status_code == 200, answer.text
        await eventually(partial(_cancellation_handled, db, sub.name, order_id))
        assert (await _deal_state(ops, day, deal))["remaining"] == before["remaining"]
    print(f"double-event race: {ROUNDS} rounds x 6 concurrent deliveries, applied once each")


async def _cancellation_handled(db, consumer: str, order_id: int) -> bool:
    """The order's own order.cancelled event is in the consumer's inbox. (Counting every
    cancellation the consumer handled let any other order's, such as an expiry the beat
    made meanwhile, end the wait before this one was applied.)"""
    async with get_db("orders").session() as s:
        event_ids = (
            (
                await s.execute(
                    text(
                        "SELECT id FROM orders.outbox WHERE topic = 'order.cancelled' "
                        "AND payload #>> '{payload,order_id}' = :o"
                    ),
                    {"o": str(order_id)},
                )
            )
            .scalars()
            .all()
        )
    if not event_ids:
        return False
    async with db.session() as s:
        n = await s.execute(
            text("SELECT count(*) FROM catalog.inbox WHERE consumer = :c AND event_id = ANY(:e)"),
            {"c": consumer, "e": list(event_ids)},
        )
        return n.scalar_one() == len(event_ids)


async def test_after_sales_decisions_race_to_one_outcome_and_one_refund(gateway_url, world):
    """Per request: the leader approving three times, staff approving and the leader
    rejecting, all at once: one decision wins, and at most one refund is paid."""
    ops, leader = world["ops"], world["leader"]
    day = unique_day()
    deals = await publish_day(ops, day, [])
    buyers, orders = [], []
    for _ in range(ROUNDS):
        api = await bound_shopper(gateway_url, leader.user["leader_id"])
        r = await api.post("/orders", json={"items": [{"deal_id": deals[0]["id"], "quantity": 2}]})
        assert r.status_code == 201, r.text
        r = await api.post(f"/orders/{r.json()['id']}/pay", json={"payment_method": "pm_card_visa"})
        assert r.status_code == 200 and r.json()["status"] == "paid", r.text
        buyers.append(api)
        orders.append(r.json())
    answer = await ops.post(f"/catalog/days/{day}/close")
    assert answer.status_code == 200, answer.text
    r = await leader.get("/orders/delivery-lists", params={"pickup_date": orders[0]["pickup_date"]})
    dl = next(d for d in r.json() if orders[0]["id"] in d["orders"])
    answer = await leader.post(f"/orders/delivery-lists/{dl['id']}/received")
    assert answer.status_code == 200, answer.text

    outcomes = {"approved": 0, "rejected": 0}
    for api, order in zip(buyers, orders, strict=True):
        code = (await api.get(f"/orders/{order['id']}")).json()["pickup_code"]
        r = await leader.post("/orders/pickups", json={"pickup_code": code})
        assert r.status_code == 200, r.text
        r = await api.post(
            f"/orders/{order['id']}/after-sales",
            json={"lines": [{"line_id": order["lines"][0]["id"], "quantity": 1}], "reason": "torn"},
        )
        assert r.status_code == 201, r.text
        req = r.json()
        base = f"/orders/after-sales/{req['id']}"
        intruder = await world["other_leader"].post(f"{base}/approve")
        assert intruder.status_code == 403  # not this order's leader
        decisions = await asyncio.gather(
            leader.post(f"{base}/approve"),
            leader.post(f"{base}/approve"),
            ops.post(f"{base}/approve"),
            leader.post(f"{base}/reject", json={"reason": "no photo"}),
            leader.post(f"{base}/approve"),
        )
        statuses = sorted(d.status_code for d in decisions)
        assert statuses == [200, 409, 409, 409, 409], [(d.status_code, d.text) for d in decisions]
        winner = next(d.json() for d in decisions if d.status_code == 200)
        outcomes[winner["status"]] = outcomes.get(winner["status"], 0) + 1
        expected = req["amount_fen"] if winner["status"] == "approved" else 0

        async def settled(order_id=order["id"], expected=expected):
            async with get_db("orders").session() as s:
                rows = (
                    await s.execute(
                        text(
                            "SELECT r.status, r.amount_fen, o.refunded_fen FROM orders.orders o "
                            "LEFT JOIN orders.refunds r ON r.order_id = o.id "
                            "AND r.reason = 'after_sales' WHERE o.id = :o"
                        ),
                        {"o": order_id},
                    )
                ).all()
            if expected == 0:
                return rows if rows[0].status is None and rows[0].refunded_fen == 0 else None
            done = len(rows) == 1 and rows[0].status == "succeeded"
            return rows if done and rows[0].refunded_fen == expected == rows[0].amount_fen else None

        await eventually(settled)
    for api in buyers:
        await api.aclose()
    print(f"after-sales race: {ROUNDS} requests x 5 concurrent decisions, {outcomes}")
