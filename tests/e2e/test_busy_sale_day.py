"""A busier day through the gateway: two leaders, several shoppers, a deal that misses its
threshold, a reservation that expires, and an after-sales refund that reaches the
provider. Each leader's delivery list holds exactly their group's goods."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from services.common.clock import clock
from services.common.db import get_db
from tests.conftest import reset_clock
from tests.helpers import bound_shopper, eventually, make_products, shopper, staff, unique_day

pytestmark = pytest.mark.e2e


async def test_two_leaders_one_day(gateway_url):
    from services.platform.seed import seed_demo

    await seed_demo()
    base = gateway_url
    ops = await staff(base)
    day = unique_day()
    products = await make_products(ops, 8, price=3000)
    deals = []
    for i, p in enumerate(products):
        r = await ops.post(
            f"/catalog/days/{day}/deals",
            json={
                "product_id": p["id"],
                "group_price_fen": 1000 + 10 * i,
                "stock": 100,
                "per_shopper_limit": 10,
                "group_threshold": 50 if i == 1 else 2,
            },
        )
        deals.append(r.json())
    answer = await ops.post(f"/catalog/days/{day}/publish")
    assert answer.status_code == 200, answer.text
    eggs, flop = deals[0], deals[1]

    east = await shopper(base, "leader-standard")
    west = await shopper(base, "leader-core")
    east_buyers = [await bound_shopper(base, east.user["leader_id"]) for _ in range(3)]
    west_buyers = [await bound_shopper(base, west.user["leader_id"]) for _ in range(2)]

    orders = {}
    for who in east_buyers + west_buyers:
        r = await who.post(
            "/orders",
            json={
                "items": [
                    {"deal_id": eggs["id"], "quantity": 2},
                    {"deal_id": flop["id"], "quantity": 1},
                ]
            },
        )
        assert r.status_code == 201, r.text
        r = await who.post(f"/orders/{r.json()['id']}/pay", json={"payment_method": "pm_card_visa"})
        assert r.json()["status"] == "paid"
        orders[id(who)] = r.json()
    assert orders[id(west_buyers[0])]["commission_rate"] == "0.1600"

    # one more shopper never pays: the reservation expires and the stock comes back
    late = await bound_shopper(base, east.user["leader_id"])
    unpaid = (
        await late.post("/orders", json={"items": [{"deal_id": eggs["id"], "quantity": 5}]})
    ).json()
    clock.advance(timedelta(minutes=16))

    async def expired():
        return (await late.get(f"/orders/{unpaid['id']}")).json()["status"] == "cancelled"

    await eventually(expired)
    reset_clock()

    async def stock_back():
        d = (await ops.get(f"/catalog/days/{day}")).json()
        return next(x for x in d["deals"] if x["id"] == eggs["id"])["ordered"] == 10

    await eventually(stock_back)

    summary = (await ops.post(f"/catalog/days/{day}/close")).json()
    assert summary["deals_failed"] >= 1 and summary["lines_refunded"] == 5
    assert summary["delivery_lists"] == 2

    pickup = orders[id(east_buyers[0])]["pickup_date"]
    for leader, buyers in ((east, east_buyers), (west, west_buyers)):
        lists = (await leader.get("/orders/delivery-lists", params={"pickup_date": pickup})).json()
        assert len(lists) == 1
        lines = {ln["deal_id"]: ln["quantity"] for ln in lists[0]["lines"]}
        assert lines == {eggs["id"]: 2 * len(buyers)}  # the flop is not delivered
        assert (
            await leader.post(f"/orders/delivery-lists/{lists[0]['id']}/received")
        ).status_code == 200
        for who in buyers:
            o = (await who.get(f"/orders/{orders[id(who)]['id']}")).json()
            assert o["refunded_fen"] == 1010  # the flop's line came back
            r = await leader.post("/orders/pickups", json={"pickup_code": o["pickup_code"]})
            assert r.status_code == 200, r.text

    # an after-sales refund of one egg box for one east shopper, approved by staff
    buyer = east_buyers[1]
    order = (await buyer.get(f"/orders/{orders[id(buyer)]['id']}")).json()
    egg_line = next(ln for ln in order["lines"] if ln["deal_id"] == eggs["id"])
    r = await buyer.post(
        f"/orders/{order['id']}/after-sales",
        json={"lines": [{"line_id": egg_line["id"], "quantity": 1}], "reason": "cracked"},
    )
    assert r.status_code == 201, r.text
    r = await ops.post(f"/orders/after-sales/{r.json()['id']}/approve", json={"note": "ok"})
    assert r.status_code == 200 and r.json()["status"] == "approved"

    async def refunded():
        async with get_db("orders").session() as s:
            return (
                await s.execute(
                    text(
                        "SELECT provider_refund_id FROM orders.refunds WHERE order_id = :o AND "
                        "reason = 'after_sales' AND status = 'succeeded'"
                    ),
                    {"o": order["id"]},
                )
            ).scalar_one_or_none()

    assert (await eventually(refunded)).startswith("re_")
    order = (await buyer.get(f"/orders/{order['id']}")).json()
    assert order["refunded_fen"] == 1010 + 1000

    # commissions: east earns 12% per line, west 16%
    async def east_commissions():
        rows = (await east.get("/settlement/me/commissions", params={"limit": 200})).json()["items"]
        mine = [c for c in rows if c["order_id"] in {orders[id(b)]["id"] for b in east_buyers}]
        return mine if len(mine) == 3 else None

    rows = await eventually(east_commissions)
    assert {(c["base_fen"], c["amount_fen"]) for c in rows} == {(2000, 240)}

    async def west_commissions():
        rows = (await west.get("/settlement/me/commissions", params={"limit": 200})).json()["items"]
        mine = [c for c in rows if c["order_id"] in {orders[id(b)]["id"] for b in west_buyers}]
        return mine if len(mine) == 2 else None

    rows = await eventually(west_commissions)
    assert {(c["base_fen"], c["amount_fen"]) for c in rows} == {(2000, 320)}
