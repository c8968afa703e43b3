"""A small sale day shared by the security tests: deals, two leaders, two bound shoppers
each with an order, and staff."""

from __future__ import annotations

import pytest

from tests.helpers import bound_shopper, make_products, shopper, staff, unique_day


@pytest.fixture(scope="package")
async def world(gateway_url):
    from services.common.seed import seed_demo

    await seed_demo()
    ops = await staff(gateway_url)
    day = unique_day()
    products = await make_products(ops, 8)
    deals = []
    for p in products:
        r = await ops.post(
            f"/catalog/days/{day}/deals",
            json={
                "product_id": p["id"],
                "group_price_fen": 900,
                "stock": 50,
                "per_shopper_limit": 5,
                "group_threshold": 0,
            },
        )
        assert r.status_code == 201, r.text
        deals.append(r.json())
    assert (await ops.post(f"/catalog/days/{day}/publish")).status_code == 200
    leader = await shopper(gateway_url, "leader-standard")
    other_leader = await shopper(gateway_url, "leader-advanced")
    alice = await bound_shopper(gateway_url, leader.user["leader_id"])
    bob = await bound_shopper(gateway_url, other_leader.user["leader_id"])
    orders = {}
    for who, api in (("alice", alice), ("bob", bob)):
        r = await api.post("/orders", json={"items": [{"deal_id": deals[0]["id"], "quantity": 1}]})
        assert r.status_code == 201, r.text
        orders[who] = r.json()
    yield {
        "ops": ops,
        "day": day,
        "deals": deals,
        "leader": leader,
        "other_leader": other_leader,
        "alice": alice,
        "bob": bob,
        "orders": orders,
    }
    for api in (ops, leader, other_leader, alice, bob):
        await api.aclose()
