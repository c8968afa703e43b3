"""A small sale day shared by the security tests: deals, two leaders, two bound shoppers
each with an order, and staff."""

from __future__ import annotations

import pytest

from tests.helpers import bound_shopper, open_day, shopper, staff, unique_day


@pytest.fixture(scope="package")
async def world(gateway_url):
    from services.platform.seed import seed_demo

    await seed_demo()
    ops = await staff(gateway_url)
    day = unique_day()
    deals = await open_day(ops, day, price=900, stock=50, limit=5)
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
