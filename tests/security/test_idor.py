"""No shopper or leader reads or changes another's orders, tier history, deposit or
after-sales, whatever id they put in the URL."""

from __future__ import annotations

from sqlalchemy import text

from services.common.db import get_db
from tests.helpers import problem_of


async def _order_row(order_id: int) -> tuple:
    async with get_db("orders").session() as s:
        row = await s.execute(
            text(
                "SELECT status, paid_at, pay_attempts, refunded_fen, payment_intent_id "
                "FROM orders.orders WHERE id = :id"
            ),
            {"id": order_id},
        )
        return tuple(row.one())


async def test_another_shopper_can_neither_read_nor_change_an_order(world):
    alice, bob = world["alice"], world["bob"]
    order = world["orders"]["alice"]
    before = await _order_row(order["id"])
    answer = await alice.get(f"/orders/{order['id']}")
    assert answer.status_code == 200, answer.text

    r = await bob.get(f"/orders/{order['id']}")
    assert r.status_code in (403, 404) and problem_of(r)
    attempts = [
        await bob.post(f"/orders/{order['id']}/cancel"),
        await bob.post(
            f"/orders/{order['id']}/pay",
            json={
                "card": {
                    "number": "4242424242424242",
                    "exp_month": 12,
                    "exp_year": 2040,
                    "cvc": "123",
                }
            },
        ),
        await bob.post(
            f"/orders/{order['id']}/after-sales",
            json={"lines": [{"line_id": order["lines"][0]["id"], "quantity": 1}], "reason": "mine"},
        ),
    ]
    for r in attempts:
        assert r.status_code in (403, 404), r.text
        problem_of(r)
    assert await _order_row(order["id"]) == before

    listed = (await bob.get("/orders")).json()["items"]
    assert order["id"] not in {o["id"] for o in listed}
    assert all(o["shopper_id"] == bob.user["id"] for o in listed)


async def test_another_leader_cannot_see_an_order_nor_its_pickup_code(world):
    order = world["orders"]["alice"]
    r = await world["other_leader"].get(f"/orders/{order['id']}")
    assert r.status_code in (403, 404)
    mine = await world["leader"].get(f"/orders/{order['id']}")
    assert mine.status_code == 200
    # the leader sees the order, but the code is the shopper's to show at pickup
    assert mine.json()["pickup_code"] is None
    listed = (await world["other_leader"].get("/orders")).json()["items"]
    assert order["id"] not in {o["id"] for o in listed}


async def test_tier_history_and_deposit_belong_to_their_leader(world):
    lid = world["leader"].user["leader_id"]
    other = world["other_leader"].user["leader_id"]
    for path in (f"/leaders/{lid}/tier-history", f"/leaders/{lid}/deposit/history"):
        answer = await world["leader"].get(path)
        assert answer.status_code == 200, answer.text
        answer = await world["ops"].get(path)
        assert answer.status_code == 200, answer.text
        for intruder in ("other_leader", "alice", "bob"):
            r = await world[intruder].get(path)
            assert r.status_code == 403, (intruder, path, r.text)
            problem_of(r)
    # "me" routes answer for the caller only, never for an id they name
    mine = (await world["other_leader"].get("/leaders/me")).json()
    assert mine.get("leader_id", mine.get("id")) == other
