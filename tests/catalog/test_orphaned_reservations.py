"""Stock held for an order that was never recorded (a crash between the reservation and
the order's insert) comes back; stock of real orders is never touched by the sweep."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from services.common.clock import clock
from services.common.db import get_db
from tests.helpers import bound_shopper, eventually, open_day, shopper, staff, unique_day


async def test_orphaned_reservation_is_released_and_real_orders_keep_theirs(gateway_url):
    from services.platform.seed import seed_demo

    await seed_demo()
    ops = await staff(gateway_url)
    day = unique_day()
    deals = await open_day(ops, day, price=600, stock=10, limit=5)
    deal = deals[0]
    leader = await shopper(gateway_url, "leader-standard")
    real_buyer = await bound_shopper(gateway_url, leader.user["leader_id"])
    paid = (
        await real_buyer.post("/orders", json={"items": [{"deal_id": deal["id"], "quantity": 2}]})
    ).json()
    r = await real_buyer.post(f"/orders/{paid['id']}/pay", json={"payment_method": "pm_card_visa"})
    assert r.json()["status"] == "paid"

    # what a crash leaves: stock held under an order id the orders service never stored
    async with get_db("catalog").transaction() as s:
        await s.execute(
            text("UPDATE catalog.deals SET reserved = reserved + 3 WHERE id = :d"),
            {"d": deal["id"]},
        )
        await s.execute(
            text(
                "INSERT INTO catalog.reservations (order_id, deal_id, shopper_id, quantity, status, "
                "created_at) VALUES (987654321, :d, 1, 3, 'held', :at)"
            ),
            # the platform's clock, as the catalog stamps a hold (not the database's, which
            # a run started with TEST_CLOCK_START sets apart)
            {"d": deal["id"], "at": clock.now()},
        )

    def ordered(body):
        return next(d for d in body["deals"] if d["id"] == deal["id"])["ordered"]

    assert ordered((await ops.get(f"/catalog/days/{day}")).json()) == 5
    clock.advance(timedelta(minutes=25))

    async def released():
        return ordered((await ops.get(f"/catalog/days/{day}")).json()) == 2

    await eventually(released, timeout=30)
    async with get_db("catalog").session() as s:
        statuses = dict(
            (
                await s.execute(
                    text("SELECT order_id, status FROM catalog.reservations WHERE deal_id = :d"),
                    {"d": deal["id"]},
                )
            ).all()
        )
    assert statuses == {987654321: "released", paid["id"]: "held"}
    await ops.aclose()
