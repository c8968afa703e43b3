"""The first sale day, end to end, through the gateway only, with every real process:
staff publish deals, shoppers order and pay, stock holds under a race, the cutoff
refunds a missed threshold, the leader hands goods over, and the commission lands."""

from __future__ import annotations

import asyncio
import csv
import io
from decimal import Decimal

import httpx
import orjson
import pytest
from sqlalchemy import text

from services.common.db import get_db
from services.common.payments import sign_webhook
from tests.helpers import (
    Api,
    bound_shopper,
    eventually,
    future_day,
    make_products,
    problem_of,
    shopper,
    staff,
)

pytestmark = pytest.mark.e2e


async def _leader(base: str, name: str) -> Api:
    api = await shopper(base, name)
    assert "leader" in api.user["roles"], api.user
    return api


@pytest.fixture(scope="module")
async def seeded(infra):
    from services.platform.seed import seed_demo

    await seed_demo()
    await seed_demo()  # idempotent: the second run adds nothing
    from services.platform.seed import DEMO_PRODUCTS

    async with get_db("leaders").session() as s:
        leaders = (
            await s.execute(
                text(
                    "SELECT count(*) FROM leaders.leaders l JOIN leaders.users u ON u.id = l.user_id "
                    "WHERE u.external_id LIKE 'dev:leader-%'"
                )
            )
        ).scalar_one()
    async with get_db("catalog").session() as s:
        products = (
            await s.execute(
                text("SELECT count(*) FROM catalog.products WHERE sku = ANY(:skus)"),
                {"skus": [p[0] for p in DEMO_PRODUCTS]},
            )
        ).scalar_one()
    assert (leaders, products) == (3, 8)


async def test_a_whole_sale_day(gateway_url, seeded):
    base = gateway_url
    ops = await staff(base)
    day = future_day(3)

    # 1. staff create products and deals; 7 deals cannot be published, 8 can
    products = await make_products(ops, 8, price=1290)
    tomato, flop, scarce = products[0], products[1], products[2]
    specs = [
        {
            "product_id": tomato["id"],
            "group_price_fen": 990,
            "stock": 100,
            "per_shopper_limit": 5,
            "group_threshold": 0,
        },
        {
            "product_id": flop["id"],
            "group_price_fen": 1500,
            "stock": 100,
            "per_shopper_limit": 5,
            "group_threshold": 1000,
        },
        {
            "product_id": scarce["id"],
            "group_price_fen": 500,
            "stock": 5,
            "per_shopper_limit": 5,
            "group_threshold": 0,
        },
    ] + [
        {
            "product_id": p["id"],
            "group_price_fen": 800,
            "stock": 50,
            "per_shopper_limit": 5,
            "group_threshold": 0,
        }
        for p in products[3:7]
    ]
    deals = []
    for spec in specs:
        r = await ops.post(f"/catalog/days/{day}/deals", json=spec)
        assert r.status_code == 201, r.text
        deals.append(r.json())
    r = await ops.post(f"/catalog/days/{day}/publish")
    assert r.status_code == 422, r.text
    assert problem_of(r)["code"] == "catalog_size"
    assert "7" in r.json()["detail"]
    r = await ops.post(
        f"/catalog/days/{day}/deals",
        json={
            "product_id": products[7]["id"],
            "group_price_fen": 800,
            "stock": 50,
            "per_shopper_limit": 5,
            "group_threshold": 0,
        },
    )
    assert r.status_code == 201, r.text
    r = await ops.post(f"/catalog/days/{day}/publish")
    assert r.status_code == 200 and r.json()["status"] == "published"
    tomato_deal, flop_deal, scarce_deal = deals[0], deals[1], deals[2]

    # 2. a shopper binds to the standard leader, orders 2 x 990 and pays
    leader = await _leader(base, "leader-standard")
    leader_id = leader.user["leader_id"]
    alice = await bound_shopper(base, leader_id)
    r = await alice.get(f"/catalog/days/{day}")
    assert r.status_code == 200 and len(r.json()["deals"]) == 8
    r = await alice.post("/orders", json={"items": [{"deal_id": tomato_deal["id"], "quantity": 2}]})
    assert r.status_code == 201, r.text
    order = r.json()
    assert order["total_fen"] == 1980
    assert order["status"] == "pending_payment"
    assert order["leader_id"] == leader_id
    assert Decimal(order["commission_rate"]) == Decimal("0.12")
    r = await alice.post(f"/orders/{order['id']}/pay", json={"payment_method": "pm_card_visa"})
    assert r.status_code == 200, r.text
    paid = r.json()
    assert paid["status"] == "paid"
    assert paid["pickup_code"] and len(paid["pickup_code"]) >= 12
    r = await alice.post(f"/orders/{order['id']}/pay", json={"payment_method": "pm_card_visa"})
    assert r.status_code == 200 and r.json()["status"] == "paid"  # paying again: no second charge

    # the same shopper also buys the deal that will miss its threshold
    r = await alice.post("/orders", json={"items": [{"deal_id": flop_deal["id"], "quantity": 1}]})
    flop_order = r.json()
    r = await alice.post(f"/orders/{flop_order['id']}/pay", json={"payment_method": "pm_card_visa"})
    assert r.json()["status"] == "paid"

    # a declined card leaves the order unpaid with a clear error
    bob = await bound_shopper(base, leader_id)
    r = await bob.post("/orders", json={"items": [{"deal_id": tomato_deal["id"], "quantity": 1}]})
    declined = r.json()
    r = await bob.post(
        f"/orders/{declined['id']}/pay",
        json={
            "card": {"number": "4000000000000002", "exp_month": 12, "exp_year": 2030, "cvc": "123"}
        },
    )
    assert r.status_code == 402, r.text
    assert problem_of(r)["code"] == "card_declined"
    r = await bob.get(f"/orders/{declined['id']}")
    assert r.json()["status"] == "pending_payment" and r.json()["pickup_code"] is None

    # the provider's signed webhook arrives and is recorded; a forged one is refused
    async def webhook_seen():
        async with get_db("orders").session() as s:
            return (
                await s.execute(
                    text(
                        "SELECT count(*) FROM orders.payment_events WHERE type = "
                        "'payment_intent.succeeded' AND payload->'data'->'object'->>'id' = :pi"
                    ),
                    {"pi": paid["payment"]["intent_id"]},
                )
            ).scalar_one()

    await eventually(webhook_seen)
    forged_event = orjson.dumps(
        {
            "id": "evt_forged",
            "type": "payment_intent.succeeded",
            "data": {
                "object": {
                    "id": "pi_x",
                    "amount": 1,
                    "metadata": {"kind": "order", "order_id": str(declined["id"])},
                }
            },
        }
    )
    async with httpx.AsyncClient(base_url=base) as anon:
        r = await anon.post(
            "/payments/webhook",
            content=forged_event,
            headers={
                "stripe-signature": sign_webhook(forged_event, "whsec_wrong"),
                "content-type": "application/json",
            },
        )
        assert r.status_code == 400, r.text
        assert problem_of(r)["code"] == "invalid_signature"
        r = await anon.post("/payments/webhook", content=forged_event)
        assert r.status_code == 400, r.text
    r = await bob.get(f"/orders/{declined['id']}")
    assert r.json()["status"] == "pending_payment"

    # 3. ten shoppers race for five units: exactly five win, stock never goes negative
    racers = [await bound_shopper(base, leader_id) for _ in range(10)]
    results = await asyncio.gather(
        *(
            racer.post("/orders", json={"items": [{"deal_id": scarce_deal["id"], "quantity": 1}]})
            for racer in racers
        )
    )
    assert sorted(r.status_code for r in results) == [201] * 5 + [409] * 5
    assert all(problem_of(r)["code"] == "out_of_stock" for r in results if r.status_code == 409)
    r = await alice.get(f"/catalog/days/{day}")
    scarce_now = next(d for d in r.json()["deals"] if d["id"] == scarce_deal["id"])
    assert scarce_now["remaining"] == 0 and scarce_now["ordered"] == 5
    for racer, res in zip(racers, results, strict=True):
        if res.status_code == 201:
            r = await racer.post(
                f"/orders/{res.json()['id']}/pay", json={"payment_method": "pm_card_visa"}
            )
            assert r.status_code == 200, r.text

    # 7. another shopper cannot read alice's order
    r = await bob.get(f"/orders/{order['id']}")
    assert r.status_code in (403, 404)
    assert problem_of(r)["code"] in ("not_your_order", "order_not_found")

    # 4. staff close the day: the missed threshold is cancelled and refunded
    r = await ops.post(f"/catalog/days/{day}/close")
    assert r.status_code == 200, r.text
    summary = r.json()
    assert summary["deals_failed"] == 1 and summary["lines_refunded"] == 1
    assert summary["delivery_lists"] == 1
    r = await alice.get(f"/orders/{flop_order['id']}")
    assert r.json()["status"] == "cancelled" and r.json()["refunded_fen"] == 1500
    r = await bob.get(f"/orders/{declined['id']}")
    assert r.json()["status"] == "cancelled"  # unpaid at cutoff

    async def refund_done():
        async with get_db("orders").session() as s:
            return (
                await s.execute(
                    text(
                        "SELECT provider_refund_id FROM orders.refunds WHERE order_id = :o AND "
                        "status = 'succeeded'"
                    ),
                    {"o": flop_order["id"]},
                )
            ).scalar_one_or_none()

    refund_id = await eventually(refund_done)
    assert refund_id.startswith("re_")
    r = await ops.post(f"/catalog/days/{day}/close")  # running it twice changes nothing
    assert r.status_code == 200 and r.json()["lines_refunded"] == 0
    async with get_db("orders").session() as s:
        assert (
            await s.execute(
                text("SELECT count(*) FROM orders.refunds WHERE order_id = :o"),
                {"o": flop_order["id"]},
            )
        ).scalar_one() == 1
    r = await alice.get(f"/catalog/days/{day}")
    outcomes = {d["id"]: d["outcome"] for d in r.json()["deals"]}
    assert outcomes[flop_deal["id"]] == "failed" and outcomes[tomato_deal["id"]] == "succeeded"

    pickup_date = order["pickup_date"]
    r = await ops.get("/orders/sorting-list", params={"pickup_date": pickup_date})
    rows = {p["deal_id"]: p for p in r.json()["products"]}
    assert rows[tomato_deal["id"]]["leaders"] == [{"leader_id": leader_id, "quantity": 2}]
    assert flop_deal["id"] not in rows
    r = await ops.get(
        "/orders/sorting-list", params={"pickup_date": pickup_date}, headers={"accept": "text/csv"}
    )
    assert r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert {
        "deal_id": str(tomato_deal["id"]),
        "quantity": "2",
        "leader_id": str(leader_id),
    }.items() <= next(t for t in table if t["deal_id"] == str(tomato_deal["id"])).items()

    # 5. the leader receives the delivery; the pickup code works once, only for them
    r = await leader.get("/orders/delivery-lists", params={"pickup_date": pickup_date})
    lists = r.json()
    assert len(lists) == 1 and order["id"] in lists[0]["orders"]
    assert {"deal_id": tomato_deal["id"], "quantity": 2}.items() <= next(
        ln for ln in lists[0]["lines"] if ln["deal_id"] == tomato_deal["id"]
    ).items()
    other_leader = await _leader(base, "leader-advanced")
    r = await other_leader.post(f"/orders/delivery-lists/{lists[0]['id']}/received")
    assert r.status_code == 403, r.text
    r = await leader.post(f"/orders/delivery-lists/{lists[0]['id']}/received")
    assert r.status_code == 200, r.text
    r = await alice.get(f"/orders/{order['id']}")
    assert r.json()["status"] == "ready_for_pickup"
    code = r.json()["pickup_code"]
    r = await other_leader.post("/orders/pickups", json={"pickup_code": code})
    assert r.status_code in (403, 404)
    r = await leader.post("/orders/pickups", json={"pickup_code": code})
    assert r.status_code == 200 and r.json()["status"] == "picked_up"
    assert r.json()["pickup_code"] is None  # the leader never sees the shopper's code
    r = await leader.post("/orders/pickups", json={"pickup_code": code})
    assert r.status_code == 409 and problem_of(r)["code"] == "already_picked_up"

    # 6. order.picked_up reaches settlement: one pending commission of 238 on base 1980
    async def commission():
        r = await leader.get("/settlement/me/commissions")
        rows = [c for c in r.json()["items"] if c["order_id"] == order["id"]]
        return rows or None

    rows = await eventually(commission)
    assert len(rows) == 1
    c = rows[0]
    assert (c["base_fen"], Decimal(c["rate"]), c["amount_fen"], c["status"]) == (
        1980,
        Decimal("0.12"),
        238,
        "pending",
    )
    r = await leader.get("/settlement/me/balance")
    assert r.json()["pending_fen"] >= 238

    # delivering the same event twice more records it once
    async with get_db("orders").session() as s:
        env = (
            await s.execute(
                text(
                    "SELECT payload FROM orders.outbox WHERE topic = 'order.picked_up' AND "
                    "(payload->'payload'->>'order_id')::int = :o"
                ),
                {"o": order["id"]},
            )
        ).scalar_one()
    from services.common.celery_app import celery

    for _ in range(2):
        celery.send_task("events.dispatch", args=[env])

    async def redelivered_and_ignored():
        async with get_db("settlement").session() as s:
            handled = (
                await s.execute(
                    text("SELECT count(*) FROM settlement.inbox WHERE event_id = :e"),
                    {"e": env["id"]},
                )
            ).scalar_one()
        return handled == 1

    await eventually(redelivered_and_ignored)
    await asyncio.sleep(2)  # give the duplicates time to be (not) applied
    async with get_db("settlement").session() as s:
        assert (
            await s.execute(
                text("SELECT count(*) FROM settlement.commissions WHERE order_id = :o"),
                {"o": order["id"]},
            )
        ).scalar_one() == 1
        assert (
            await s.execute(
                text("SELECT count(*) FROM settlement.ledger_transactions WHERE reference = :r"),
                {"r": f"commission:{c['line_id']}"},
            )
        ).scalar_one() == 1
    for api in (ops, alice, bob, leader, other_leader, *racers):
        await api.aclose()
