"""A service restarted mid-request loses no event: the orders service is stopped with
SIGTERM while shoppers are paying, and killed with SIGKILL while the leader redeems
pickup codes. Clients retry with the same Idempotency-Key, as a real app does. Every
committed change then has its event published once and applied once downstream, and
each retried request had one effect (one charge, one commission per line)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter

from sqlalchemy import text

from services.common.db import get_db
from services.common.payments import PaymentProvider
from tests.helpers import eventually, open_day, unique_day
from tests.security.faulty import RetryStats, login, staff_login

SHOPPERS = int(os.environ.get("RESTART_SHOPPERS", "10"))


async def _stop_during(platform, signum: int, started: asyncio.Event) -> None:
    """Once the first request of the burst got through, stop the orders service with
    `signum` while the rest are in flight, then start it again."""
    await started.wait()
    proc = platform.supervisor.procs["orders"]
    os.killpg(proc.pid, signum)
    await asyncio.to_thread(proc.wait, 30)
    platform.start_service("orders")


async def _burst(platform, signum: int, calls) -> list:
    started = asyncio.Event()

    async def run(call):
        r = await call()
        started.set()
        return r

    stopper = asyncio.create_task(_stop_during(platform, signum, started))
    try:
        results = await asyncio.gather(*(run(c) for c in calls))
    finally:
        await stopper
    return results


async def _events_of(order_ids: list[int]) -> list:
    async with get_db("orders").session() as s:
        return (
            await s.execute(
                text(
                    "SELECT id, topic, (payload->'payload'->>'order_id')::int AS order_id, "
                    "published_at FROM orders.outbox WHERE topic IN ('order.paid', "
                    "'order.picked_up') AND (payload->'payload'->>'order_id')::int = ANY(:o)"
                ),
                {"o": order_ids},
            )
        ).all()


async def _handled(schema: str, event_ids: list) -> Counter:
    async with get_db(schema).session() as s:
        rows = (
            await s.execute(
                text(f"SELECT event_id FROM {schema}.inbox WHERE event_id = ANY(:e)"),
                {"e": event_ids},
            )
        ).scalars()
        return Counter(rows)


async def test_orders_restarted_mid_request_loses_no_event(platform, gateway_url):
    from services.platform.seed import seed_demo

    await seed_demo()
    stats = RetryStats()
    ops = await staff_login(gateway_url, stats)
    day = unique_day()
    deals = await open_day_through(ops, day)
    leader = await login(gateway_url, stats, "leader-standard")
    shoppers = []
    for i in range(SHOPPERS):
        me = await login(gateway_url, stats, f"restart-shopper-{day}-{i}")
        r = await me.call("PUT", "/me/leader", json={"leader_id": leader.user["leader_id"]})
        assert r.status_code == 200, r.text
        r = await me.call(
            "POST", "/orders", json={"items": [{"deal_id": deals[i % 8]["id"], "quantity": 2}]}
        )
        assert r.status_code == 201, r.text
        shoppers.append((me, r.json()))
    order_ids = [o["id"] for _, o in shoppers]

    # 1. SIGTERM while every shopper pays (the pay call emits order.paid)
    paid = await _burst(
        platform,
        signal.SIGTERM,
        [
            lambda me=me, o=o: me.call(
                "POST",
                f"/orders/{o['id']}/pay",
                key=f"pay-{o['id']}",
                json={"payment_method": "pm_card_visa"},
            )
            for me, o in shoppers
        ],
    )
    assert [r.status_code for r in paid] == [200] * SHOPPERS, [r.text for r in paid]
    assert {r.json()["status"] for r in paid} == {"paid"}

    r = await ops.call("POST", f"/catalog/days/{day}/close")
    assert r.status_code == 200, r.text
    pickup_date = paid[0].json()["pickup_date"]
    r = await leader.call("GET", "/orders/delivery-lists", params={"pickup_date": pickup_date})
    (dl,) = r.json()
    r = await leader.call("POST", f"/orders/delivery-lists/{dl['id']}/received")
    assert r.status_code == 200, r.text
    codes = []
    for me, o in shoppers:
        r = await me.call("GET", f"/orders/{o['id']}")
        assert r.json()["status"] == "ready_for_pickup", r.text
        codes.append(r.json()["pickup_code"])

    # 2. SIGKILL while the leader redeems every code (each emits order.picked_up). One
    # redemption is certainly inside the service when it dies: its order row is locked
    # here, so it waits in the database after claiming its Idempotency-Key.
    async with get_db("orders").transaction() as lock:
        await lock.execute(
            text("SELECT 1 FROM orders.orders WHERE id = :o FOR UPDATE"), {"o": order_ids[0]}
        )
        redeem = [
            asyncio.create_task(
                leader.call(
                    "POST", "/orders/pickups", key=f"pickup-{code}", json={"pickup_code": code}
                )
            )
            for code in codes
        ]

        async def claimed():
            async with get_db("orders").session() as s:
                return (
                    await s.execute(
                        text("SELECT status FROM orders.idempotency_keys WHERE key LIKE :k"),
                        {"k": f"%:pickup-{codes[0]}"},
                    )
                ).scalar_one_or_none() == "started"

        await eventually(claimed, timeout=30, interval=0.05)
        proc = platform.supervisor.procs["orders"]
        os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 30)
    platform.start_service("orders")
    # the dead process's claim on that key goes stale and the leader's retry takes it over
    picked = await asyncio.gather(*redeem)
    # A redemption the killed process committed but had not yet recorded under its key
    # cannot be replayed: the retry runs again and gets the domain's answer, 409
    # `already_picked_up` (the leader's scanner shows the parcel as handed over). The
    # effect is still once: one picked_up event per order, checked below.
    outcomes = Counter(
        r.status_code if r.status_code == 200 else r.json().get("code") for r in picked
    )
    assert set(outcomes) <= {200, "already_picked_up"}, [r.text for r in picked]

    # every committed change has exactly one event, published (the sweep covers relays
    # the stopped process never ran) and applied once by each consumer
    async def all_applied():
        events = await _events_of(order_ids)
        if len(events) < 2 * SHOPPERS or any(e.published_at is None for e in events):
            return None
        ids = [e.id for e in events]
        leaders_seen = await _handled("leaders", ids)
        settled = await _handled("settlement", [e.id for e in events if e.topic.endswith("up")])
        if len(leaders_seen) < len(ids) or len(settled) < SHOPPERS:
            return None
        return events, leaders_seen, settled

    events, leaders_seen, settled = await eventually(all_applied, timeout=90)
    assert Counter((e.order_id, e.topic) for e in events) == Counter(
        {(o, t): 1 for o in order_ids for t in ("order.paid", "order.picked_up")}
    )
    # order.paid and order.picked_up each reach one leaders consumer; order.picked_up
    # one settlement consumer: every event handled exactly once by each
    assert set(leaders_seen.values()) == {1}
    assert set(settled.values()) == {1}

    async with get_db("settlement").session() as s:
        commissions = (
            await s.execute(
                text(
                    "SELECT order_id, count(*) AS n FROM settlement.commissions "
                    "WHERE order_id = ANY(:o) GROUP BY order_id"
                ),
                {"o": order_ids},
            )
        ).all()
        txs = (
            await s.execute(
                text(
                    "SELECT count(*) FROM settlement.ledger_transactions t JOIN "
                    "settlement.commissions c ON t.reference = 'commission:' || c.order_line_id "
                    "WHERE c.order_id = ANY(:o)"
                ),
                {"o": order_ids},
            )
        ).scalar_one()
    assert {c.order_id: c.n for c in commissions} == dict.fromkeys(order_ids, 1)
    assert txs == SHOPPERS

    # one charge per order, whatever the retries
    provider = PaymentProvider()
    try:
        charged = Counter()
        after = None
        while True:
            params = {"limit": 100, **({"starting_after": after} if after else {})}
            body = await provider._call("GET", "/v1/payment_intents", params)
            for pi in body["data"]:
                oid = pi["metadata"].get("order_id")
                if pi["status"] == "succeeded" and oid and int(oid) in order_ids:
                    charged[int(oid)] += 1
            if not body.get("has_more") or not body["data"]:
                break
            after = body["data"][-1]["id"]
    finally:
        await provider.aclose()
    assert charged == Counter(dict.fromkeys(order_ids, 1))
    print(
        f"\nrestarts: {SHOPPERS} pays across SIGTERM, {SHOPPERS} pickups across SIGKILL "
        f"({dict(outcomes)}), client retries {dict(stats.retries)}"
    )
    for c in (ops, leader, *(me for me, _ in shoppers)):
        await c.aclose()


async def open_day_through(ops, day) -> list[dict]:
    from tests.helpers import Api

    api = Api(ops.base, ops.token)
    try:
        return await open_day(api, day, price=2000, stock=100, limit=5)
    finally:
        await api.aclose()
