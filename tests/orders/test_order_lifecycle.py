"""Every rule of a sale day that shoppers, leaders and staff notice, through the gateway
with the real processes: expiry, late payments, partial refunds at cutoff, after-sales,
completion, lists, and the races around payment."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import text

from services.common.clock import clock
from services.common.db import get_db
from tests.helpers import (
    bound_shopper,
    eventually,
    make_products,
    problem_of,
    shopper,
    staff,
    unique_day,
)


@pytest.fixture(scope="module")
async def world(gateway_url):
    from services.platform.seed import seed_demo

    await seed_demo()
    ops = await staff(gateway_url)
    standard = await shopper(gateway_url, "leader-standard")
    advanced = await shopper(gateway_url, "leader-advanced")
    yield {"ops": ops, "standard": standard, "advanced": advanced}
    for api in (ops, standard, advanced):
        await api.aclose()


async def _day(ops, thresholds=(0, 0, 0), stock=50):
    """A published day whose first deals have the given thresholds; returns (day, deals)."""
    day = unique_day()
    products = await make_products(ops, 8, price=2000)
    deals = []
    for i, p in enumerate(products):
        r = await ops.post(
            f"/catalog/days/{day}/deals",
            json={
                "product_id": p["id"],
                "group_price_fen": 1000 + i * 100,
                "stock": stock,
                "per_shopper_limit": 10,
                "group_threshold": thresholds[i] if i < len(thresholds) else 0,
            },
        )
        assert r.status_code == 201, r.text
        deals.append(r.json())
    answer = await ops.post(f"/catalog/days/{day}/publish")
    assert answer.status_code == 200, answer.text
    return day, deals


async def _paid_order(api, items):
    r = await api.post("/orders", json={"items": items})
    assert r.status_code == 201, r.text
    r = await api.post(f"/orders/{r.json()['id']}/pay", json={"payment_method": "pm_card_visa"})
    assert r.status_code == 200 and r.json()["status"] == "paid", r.text
    return r.json()


async def _picked_up(world, api, order):
    ops, leader = world["ops"], world["standard"]
    r = await ops.post(f"/catalog/days/{order['sale_date']}/close")
    assert r.status_code == 200, r.text
    r = await leader.get("/orders/delivery-lists", params={"pickup_date": order["pickup_date"]})
    dl = next(d for d in r.json() if order["id"] in d["orders"])
    answer = await leader.post(f"/orders/delivery-lists/{dl['id']}/received")
    assert answer.status_code == 200, answer.text
    code = (await api.get(f"/orders/{order['id']}")).json()["pickup_code"]
    r = await leader.post("/orders/pickups", json={"pickup_code": code})
    assert r.status_code == 200 and r.json()["status"] == "picked_up"
    return r.json()


async def test_unpaid_reservation_expires_and_stock_returns(gateway_url, world):
    day, deals = await _day(world["ops"])
    alice = await bound_shopper(gateway_url, world["standard"].user["leader_id"])
    r = await alice.post("/orders", json={"items": [{"deal_id": deals[0]["id"], "quantity": 3}]})
    order = r.json()
    remaining = lambda d: next(x for x in d["deals"] if x["id"] == deals[0]["id"])["remaining"]  # noqa: E731
    assert remaining((await alice.get(f"/catalog/days/{day}")).json()) == 47
    clock.advance(timedelta(minutes=16))

    async def expired():
        o = (await alice.get(f"/orders/{order['id']}")).json()
        return o["status"] == "cancelled" and o["cancel_reason"] == "expired"

    await eventually(expired)

    async def stock_back():
        return remaining((await alice.get(f"/catalog/days/{day}")).json()) == 50

    await eventually(stock_back)
    r = await alice.post(f"/orders/{order['id']}/pay", json={"payment_method": "pm_card_visa"})
    assert r.status_code == 409 and problem_of(r)["code"] == "order_expired"


async def test_money_arriving_after_expiry_goes_back(gateway_url, world, infra):
    _, deals = await _day(world["ops"])
    bob = await bound_shopper(gateway_url, world["standard"].user["leader_id"])
    order = (
        await bob.post("/orders", json={"items": [{"deal_id": deals[1]["id"], "quantity": 1}]})
    ).json()
    r = await bob.post(
        f"/orders/{order['id']}/pay", json={"payment_method": "pm_card_visa_chargeDeclined"}
    )
    assert r.status_code == 402, r.text
    intent_id = (await bob.get(f"/orders/{order['id']}")).json()["payment"]["intent_id"]
    clock.advance(timedelta(minutes=16))

    async def expired():
        return (await bob.get(f"/orders/{order['id']}")).json()["status"] == "cancelled"

    await eventually(expired)
    # the shopper's app confirms the old intent late, straight with the provider
    async with httpx.AsyncClient(
        base_url=infra.settings.payments_api_base, auth=(infra.settings.payments_api_key, "")
    ) as provider:
        r = await provider.post(
            f"/v1/payment_intents/{intent_id}/confirm", data={"payment_method": "pm_card_visa"}
        )
        assert r.json()["status"] == "succeeded"

    async def refunded():
        async with get_db("orders").session() as s:
            return (
                await s.execute(
                    text(
                        "SELECT status FROM orders.refunds WHERE order_id = :o AND reason = "
                        "'late_payment'"
                    ),
                    {"o": order["id"]},
                )
            ).scalar_one_or_none() == "succeeded"

    await eventually(refunded)
    assert (await bob.get(f"/orders/{order['id']}")).json()["status"] == "cancelled"


async def test_cutoff_refunds_only_the_missed_line_of_a_multi_line_order(gateway_url, world):
    ops = world["ops"]
    day, deals = await _day(ops, thresholds=(0, 100))
    carol = await bound_shopper(gateway_url, world["standard"].user["leader_id"])
    order = await _paid_order(
        carol,
        [{"deal_id": deals[0]["id"], "quantity": 2}, {"deal_id": deals[1]["id"], "quantity": 1}],
    )
    assert order["total_fen"] == 2 * 1000 + 1100
    r = await ops.post(f"/catalog/days/{day}/close")
    assert r.json()["lines_refunded"] == 1
    after = (await carol.get(f"/orders/{order['id']}")).json()
    assert after["status"] == "confirmed"
    assert after["refunded_fen"] == 1100
    lines = {ln["deal_id"]: ln for ln in after["lines"]}
    assert lines[deals[1]["id"]]["status"] == "cancelled"
    assert lines[deals[0]["id"]]["status"] == "active"
    r = await carol.post("/orders", json={"items": [{"deal_id": deals[2]["id"], "quantity": 1}]})
    assert r.status_code == 409 and problem_of(r)["code"] in ("sale_day_not_open", "past_cutoff")


async def test_after_sales_refund_is_paid_once_and_completion_follows(gateway_url, world):
    _, deals = await _day(world["ops"])
    dave = await bound_shopper(gateway_url, world["standard"].user["leader_id"])
    order = await _paid_order(dave, [{"deal_id": deals[0]["id"], "quantity": 2}])
    await _picked_up(world, dave, order)
    line = order["lines"][0]

    r = await dave.post(
        f"/orders/{order['id']}/after-sales",
        json={"lines": [{"line_id": line["id"], "quantity": 3}], "reason": "x"},
    )
    assert r.status_code == 422 and problem_of(r)["code"] == "too_many_units"
    eve = await bound_shopper(gateway_url, world["standard"].user["leader_id"])
    r = await eve.post(
        f"/orders/{order['id']}/after-sales",
        json={"lines": [{"line_id": line["id"], "quantity": 1}], "reason": "x"},
    )
    assert r.status_code == 403, r.text
    r = await dave.post(
        f"/orders/{order['id']}/after-sales",
        json={"lines": [{"line_id": line["id"], "quantity": 1}], "reason": "one bag was torn"},
    )
    assert r.status_code == 201, r.text
    req = r.json()
    assert req["amount_fen"] == 1000 and req["status"] == "requested"

    r = await world["advanced"].post(f"/orders/after-sales/{req['id']}/approve")
    assert r.status_code == 403  # not this order's leader
    r = await world["standard"].post(f"/orders/after-sales/{req['id']}/reject", json={})
    assert r.status_code == 422  # a rejection needs a reason
    approvals = await asyncio.gather(
        *(world["standard"].post(f"/orders/after-sales/{req['id']}/approve") for _ in range(3))
    )
    assert sorted(a.status_code for a in approvals) == [200, 409, 409]

    async def refunded():
        async with get_db("orders").session() as s:
            rows = (
                await s.execute(
                    text(
                        "SELECT status, amount_fen FROM orders.refunds WHERE order_id = :o AND "
                        "reason = 'after_sales'"
                    ),
                    {"o": order["id"]},
                )
            ).all()
        return rows if rows and rows[0].status == "succeeded" else None

    rows = await eventually(refunded)
    assert [(r.status, r.amount_fen) for r in rows] == [("succeeded", 1000)]
    after = (await dave.get(f"/orders/{order['id']}")).json()
    assert after["refunded_fen"] == 1000 and after["lines"][0]["refunded_quantity"] == 1

    clock.advance(timedelta(hours=48))
    r = await dave.post(
        f"/orders/{order['id']}/after-sales",
        json={"lines": [{"line_id": line["id"], "quantity": 1}], "reason": "late"},
    )
    assert r.status_code == 409 and problem_of(r)["code"] == "after_sales_window_closed"

    async def completed():
        return (await dave.get(f"/orders/{order['id']}")).json()["status"] == "completed"

    await eventually(completed)


async def test_lists_are_scoped_by_role_filtered_and_paginated(gateway_url, world):
    _, deals = await _day(world["ops"])
    frank = await bound_shopper(gateway_url, world["advanced"].user["leader_id"])
    mine = [
        await _paid_order(frank, [{"deal_id": deals[i]["id"], "quantity": 1}]) for i in range(3)
    ]
    r = await frank.get("/orders", params={"limit": 2})
    page1 = r.json()
    assert [o["id"] for o in page1["items"]] == [mine[2]["id"], mine[1]["id"]]
    r = await frank.get("/orders", params={"limit": 2, "cursor": page1["next_cursor"]})
    assert [o["id"] for o in r.json()["items"]] == [mine[0]["id"]]
    assert r.json()["next_cursor"] is None
    r = await frank.get("/orders", params={"status": "cancelled"})
    assert r.json()["items"] == []
    r = await world["advanced"].get("/orders", params={"limit": 200})
    group = {o["id"] for o in r.json()["items"]}
    assert {o["id"] for o in mine} <= group
    r = await world["standard"].get("/orders", params={"limit": 200})
    assert not ({o["id"] for o in mine} & {o["id"] for o in r.json()["items"]})
    r = await world["ops"].get("/orders", params={"pickup_date": mine[0]["pickup_date"]})
    assert {o["id"] for o in mine} <= {o["id"] for o in r.json()["items"]}
    r = await frank.get("/orders", params={"cursor": "garbage!"})
    assert r.status_code == 422, r.text


async def test_racing_pay_calls_charge_once(gateway_url, world):
    _, deals = await _day(world["ops"])
    gina = await bound_shopper(gateway_url, world["standard"].user["leader_id"])
    order = (
        await gina.post("/orders", json={"items": [{"deal_id": deals[0]["id"], "quantity": 1}]})
    ).json()
    results = await asyncio.gather(
        *(
            gina.post(f"/orders/{order['id']}/pay", json={"payment_method": "pm_card_visa"})
            for _ in range(4)
        )
    )
    assert all(r.status_code in (200, 402, 409) for r in results)
    final = (await gina.get(f"/orders/{order['id']}")).json()
    assert final["status"] == "paid"
    async with get_db("orders").session() as s:
        attempts = (
            await s.execute(
                text("SELECT pay_attempts FROM orders.orders WHERE id = :o"), {"o": order["id"]}
            )
        ).scalar_one()
    assert attempts >= 1
    intents = {r.json()["payment"]["intent_id"] for r in results if r.status_code == 200}
    assert intents == {final["payment"]["intent_id"]}


async def test_unpublished_day_and_stock_top_up(gateway_url, world):
    ops = world["ops"]
    day = unique_day()
    product = (await make_products(ops, 1))[0]
    deal = (
        await ops.post(
            f"/catalog/days/{day}/deals",
            json={
                "product_id": product["id"],
                "group_price_fen": 500,
                "stock": 1,
                "per_shopper_limit": 5,
            },
        )
    ).json()
    hank = await bound_shopper(gateway_url, world["standard"].user["leader_id"])
    r = await hank.post("/orders", json={"items": [{"deal_id": deal["id"], "quantity": 1}]})
    assert r.status_code == 409 and problem_of(r)["code"] == "sale_day_not_open"
    assert (await hank.get(f"/catalog/days/{day}")).status_code == 404  # drafts are staff's
    answer = await ops.get(f"/catalog/days/{day}")
    assert answer.status_code == 200, answer.text
    r = await ops.post(f"/catalog/days/{day}/deals/{deal['id']}/stock", json={"add": 4})
    assert r.status_code == 200 and r.json()["stock"] == 5


async def test_shopper_cancels_while_unpaid_only(gateway_url, world):
    day, deals = await _day(world["ops"])
    ivy = await bound_shopper(gateway_url, world["standard"].user["leader_id"])
    order = (
        await ivy.post("/orders", json={"items": [{"deal_id": deals[3]["id"], "quantity": 4}]})
    ).json()
    other = await bound_shopper(gateway_url, world["standard"].user["leader_id"])
    r = await other.post(f"/orders/{order['id']}/cancel")
    assert r.status_code == 403, r.text
    r = await ivy.post(f"/orders/{order['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"

    async def stock_back():
        d = (await ivy.get(f"/catalog/days/{day}")).json()
        return next(x for x in d["deals"] if x["id"] == deals[3]["id"])["remaining"] == 50

    await eventually(stock_back)
    paid = await _paid_order(ivy, [{"deal_id": deals[3]["id"], "quantity": 1}])
    r = await ivy.post(f"/orders/{paid['id']}/cancel")
    assert r.status_code == 409 and problem_of(r)["code"] == "order_not_cancellable"


async def test_staff_list_products_with_pagination(gateway_url, world):
    ops = world["ops"]
    made = await make_products(ops, 3)
    r = await ops.get("/catalog/products", params={"limit": 2})
    page = r.json()
    assert [p["id"] for p in page["items"]] == [made[2]["id"], made[1]["id"]]
    r = await ops.get("/catalog/products", params={"limit": 2, "cursor": page["next_cursor"]})
    assert r.json()["items"][0]["id"] == made[0]["id"]
    r = await ops.post(
        "/catalog/products",
        json={"sku": made[0]["sku"], "name": "dup", "category": "fresh", "list_price_fen": 100},
    )
    assert r.status_code == 409 and problem_of(r)["code"] == "duplicate_sku"


async def test_the_cutoff_runs_on_schedule_at_2300_shanghai(gateway_url, world):
    from services.catalog.service import cutoff_for
    from tests.helpers import future_day, publish_day

    ops = world["ops"]
    day = future_day(2)
    product = (await make_products(ops, 1))[0]
    deals = await publish_day(
        ops,
        day,
        [
            {
                "product_id": product["id"],
                "group_price_fen": 900,
                "stock": 10,
                "per_shopper_limit": 5,
                "group_threshold": 5,
            }
        ],
    )
    jack = await bound_shopper(gateway_url, world["standard"].user["leader_id"])
    order = await _paid_order(jack, [{"deal_id": deals[0]["id"], "quantity": 1}])
    # one minute past 23:00 local on the sale day, without any staff action
    clock.advance(cutoff_for(day) - clock.now() + timedelta(minutes=1))

    async def closed_by_beat():
        d = (await jack.get(f"/catalog/days/{day}")).json()
        return d["status"] == "closed" and d["deals"][0]["outcome"] == "failed"

    await eventually(closed_by_beat, timeout=30)
    o = (await jack.get(f"/orders/{order['id']}")).json()
    assert o["status"] == "cancelled" and o["cancel_reason"] == "group_threshold_missed"


async def test_the_answer_to_placing_an_order_is_the_order_as_stored(gateway_url, world):
    """The placement answers from the rows it inserted (no read back): it must say what
    every later read says, lines in the same order, amounts, rate and payment alike."""
    day, deals = await _day(world["ops"])
    alice = await bound_shopper(gateway_url, world["standard"].user["leader_id"])
    items = [
        {"deal_id": deals[3]["id"], "quantity": 2},
        {"deal_id": deals[1]["id"], "quantity": 1},
        {"deal_id": deals[5]["id"], "quantity": 3},
    ]
    r = await alice.post("/orders", json={"items": items})
    assert r.status_code == 201, r.text
    placed = r.json()
    assert [ln["deal_id"] for ln in placed["lines"]] == sorted(deals[i]["id"] for i in (3, 1, 5))
    assert (
        placed["total_fen"]
        == sum(ln["amount_fen"] for ln in placed["lines"])
        == (2 * 1300 + 1100 + 3 * 1500)
    )
    r = await alice.get(f"/orders/{placed['id']}")
    assert r.json() == placed
