"""Making leaders through the public API, the way a real applicant becomes one."""

from __future__ import annotations

import uuid
from datetime import date

from services.common.clock import clock
from services.contracts.events import Event, OrderCompleted, OrderPaid
from tests.helpers import Api, shopper


def application(**over) -> dict:
    body = {
        "community_name": "Maple Court",
        "pickup_address": "12 Maple Rd, gate 2",
        "pickup_hours": "08:00-20:00",
        "group_size": 120,
        "phone": "13912345678",
        "latitude": 31.2310,
        "longitude": 121.4740,
    }
    body.update(over)
    return body


async def new_leader(base: str, ops: Api, **over) -> Api:
    """A shopper applies, staff approve, the shopper signs in again as a leader."""
    name = f"lead-{uuid.uuid4().hex[:10]}"
    applicant = await shopper(base, name)
    r = await applicant.post("/leaders/applications", json=application(**over))
    assert r.status_code == 201, r.text
    r = await ops.post(f"/leaders/applications/{r.json()['id']}/approve")
    assert r.status_code == 200, r.text
    leader = await shopper(base, name)
    assert "leader" in leader.user["roles"], leader.user
    leader.leader_id = leader.user["leader_id"]
    return leader


async def order_events(*events: Event) -> None:
    """Publish order facts the way the orders service does: its outbox, then the broker."""
    from services.common.db import get_db
    from services.common.events import emit_event, relay_outbox

    orders = get_db("orders")
    async with orders.transaction() as s:
        for event in events:
            await emit_event(s, "orders", event)
    await relay_outbox(orders)


_next_order = [9_000_000 + (uuid.uuid4().int % 1_000_000) * 100]


def fake_order_id() -> int:
    _next_order[0] += 1
    return _next_order[0]


async def sales(leader_id: int, count: int, total_fen: int, completed: bool = True) -> list[int]:
    """`count` orders by `count` different shoppers, paid (and completed) now."""
    events, ids = [], []
    for _ in range(count):
        oid, shopper_id = fake_order_id(), fake_order_id()
        ids.append(oid)
        base = {"order_id": oid, "shopper_id": shopper_id, "leader_id": leader_id}
        events.append(OrderPaid(**base, sale_date=date(2026, 11, 24), total_fen=total_fen))
        if completed:
            events.append(
                OrderCompleted(
                    **base, total_fen=total_fen, refunded_fen=0, completed_at=clock.now()
                )
            )
    await order_events(*events)
    return ids


async def staff_onboard(ops: Api, leader_id: int) -> None:
    r = await ops.post(
        "/leaders/training/sessions",
        json={"starts_at": "2026-11-20T02:00:00Z", "topic": "Welcome", "kind": "onboarding"},
    )
    assert r.status_code == 201, r.text
    r = await ops.post(
        f"/leaders/training/sessions/{r.json()['id']}/attendance", json={"leader_ids": [leader_id]}
    )
    assert r.status_code == 200, r.text
