"""The cutoff records every deal's outcome by the one rule (services/contracts/deals.py):
orders decides the deals its shoppers paid for, catalog the deals nobody paid for, and
both read a threshold the same way."""

from __future__ import annotations

import pytest

from services.contracts.deals import group_outcome
from tests.helpers import bound_shopper, make_products, publish_day, shopper, staff, unique_day


@pytest.fixture(scope="module")
async def world(gateway_url):
    from services.platform.seed import seed_demo

    await seed_demo()
    ops = await staff(gateway_url)
    leader = await shopper(gateway_url, "leader-standard")
    yield {"ops": ops, "leader": leader}
    for api in (ops, leader):
        await api.aclose()


async def test_each_deal_outcome_follows_the_rule_whoever_decides_it(gateway_url, world):
    ops = world["ops"]
    day = unique_day()
    # (threshold, units paid): decided by orders when units were paid, else by catalog
    plan = [(0, 2), (5, 2), (2, 2), (3, 0), (0, 0), (1, 0)]
    products = await make_products(ops, len(plan), price=2000)
    deals = await publish_day(
        ops,
        day,
        [
            {
                "product_id": p["id"],
                "group_price_fen": 1000,
                "stock": 50,
                "per_shopper_limit": 10,
                "group_threshold": threshold,
            }
            for p, (threshold, _) in zip(products, plan, strict=True)
        ],
    )
    buyer = await bound_shopper(gateway_url, world["leader"].user["leader_id"])
    items = [
        {"deal_id": d["id"], "quantity": paid}
        for d, (_, paid) in zip(deals, plan, strict=False)
        if paid
    ]
    r = await buyer.post("/orders", json={"items": items})
    assert r.status_code == 201, r.text
    r = await buyer.post(f"/orders/{r.json()['id']}/pay", json={"payment_method": "pm_card_visa"})
    assert r.status_code == 200 and r.json()["status"] == "paid", r.text
    await buyer.aclose()

    summary = (await ops.post(f"/catalog/days/{day}/close")).json()

    paid_by_deal = {d["id"]: paid for d, (_, paid) in zip(deals, plan, strict=False)}
    recorded = {d["id"]: d for d in (await ops.get(f"/catalog/days/{day}")).json()["deals"]}
    for deal in deals:
        want = group_outcome(paid_by_deal.get(deal["id"], 0), deal["group_threshold"])
        assert recorded[deal["id"]]["outcome"] == want, deal
    outcomes = [d["outcome"] for d in recorded.values()]
    assert summary["deals_failed"] == outcomes.count("failed") == 3  # 5 missed, 3 and 1 unpaid
    assert summary["deals_succeeded"] == outcomes.count("succeeded")
