"""Orders' copy of the shopper's leader and the leader's status and tier (placing an
order no longer asks the leaders service): a change people act on at once is seen by the
very next order, late or repeated versions never win, and the events alone bring the
copy up to date when the push is lost."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import text

from services.common.db import get_db
from services.common.http import ServiceClient
from tests.helpers import bound_shopper, eventually, problem_of, publish_day, staff, unique_day
from tests.leaders.helpers import new_leader

orders = ServiceClient("orders")


async def _copy_of(shopper_id: int) -> tuple | None:
    async with get_db("orders").session() as s:
        return (
            await s.execute(
                text(
                    "SELECT b.leader_id, b.version, t.status, t.tier, t.version "
                    "FROM orders.shopper_leaders b JOIN orders.leader_terms t "
                    "ON t.leader_id = b.leader_id WHERE b.shopper_id = :s"
                ),
                {"s": shopper_id},
            )
        ).first()


async def test_a_new_pickup_point_and_a_suspension_apply_to_the_very_next_order(gateway_url):
    ops = await staff(gateway_url)
    first, second = await new_leader(gateway_url, ops), await new_leader(gateway_url, ops)
    deals = await publish_day(ops, unique_day(), [])
    item = {"items": [{"deal_id": deals[0]["id"], "quantity": 1}]}
    alice = await bound_shopper(gateway_url, first.leader_id)

    r = await alice.post("/orders", json=item)
    assert r.status_code == 201 and r.json()["leader_id"] == first.leader_id, r.text
    # another pickup point, then an order straight away: it goes to the new leader
    r = await alice.put("/me/leader", json={"leader_id": second.leader_id})
    assert r.status_code == 200, r.text
    r = await alice.post("/orders", json=item)
    assert r.status_code == 201 and r.json()["leader_id"] == second.leader_id, r.text

    r = await ops.post(f"/leaders/{second.leader_id}/suspend", json={"reason": "audit"})
    assert r.status_code == 200, r.text
    r = await alice.post("/orders", json=item)
    assert r.status_code == 409 and problem_of(r)["code"] == "leader_suspended"
    r = await ops.post(f"/leaders/{second.leader_id}/reinstate", json={"reason": "cleared"})
    assert r.status_code == 200, r.text
    r = await alice.post("/orders", json=item)
    assert r.status_code == 201, r.text


async def test_late_and_repeated_versions_never_overwrite_newer_ones(gateway_url):
    ops = await staff(gateway_url)
    first, second = await new_leader(gateway_url, ops), await new_leader(gateway_url, ops)
    alice = await bound_shopper(gateway_url, first.leader_id)
    await alice.put("/me/leader", json={"leader_id": second.leader_id})
    copied = await _copy_of(alice.user["id"])
    assert copied is not None and copied[0] == second.leader_id
    version = copied[1]

    # the first binding's event arriving after the second's, and a version of the
    # leader's terms already applied, with other contents; twice
    for _ in range(2):
        await orders.post(
            "/internal/leader-projection",
            json={
                "bindings": [
                    {"shopper_id": alice.user["id"], "leader_id": first.leader_id, "version": 1}
                ],
                "leaders": [
                    {
                        "leader_id": second.leader_id,
                        "status": "terminated",
                        "tier": "core",
                        "version": copied[4],  # a version already applied, again
                    }
                ],
            },
        )
    assert await _copy_of(alice.user["id"]) == copied
    assert version >= 2


async def test_the_events_alone_bring_a_missed_change_to_orders(gateway_url):
    """The push is best effort: with it lost (simulated by erasing what it wrote), the
    leader's event still reaches orders' copy."""
    ops = await staff(gateway_url)
    leader = await new_leader(gateway_url, ops)
    deals = await publish_day(ops, unique_day(), [])
    bob = await bound_shopper(gateway_url, leader.leader_id)
    r = await bob.post("/orders", json={"items": [{"deal_id": deals[0]["id"], "quantity": 1}]})
    assert r.status_code == 201 and Decimal(r.json()["commission_rate"]) == 0

    async with get_db("leaders").transaction() as s:  # a suspension whose push was lost
        from services.leaders import status
        from services.leaders.models import LeaderStatus

        await status.change(s, leader.leader_id, LeaderStatus.suspended, "test", None)
    from services.common.events import kick

    kick(get_db("leaders"))

    async def suspended():
        copied = await _copy_of(bob.user["id"])
        return copied is not None and copied[2] == "suspended"

    await eventually(suspended, timeout=30)
    r = await bob.post("/orders", json={"items": [{"deal_id": deals[0]["id"], "quantity": 1}]})
    assert r.status_code == 409 and problem_of(r)["code"] == "leader_suspended"
