"""Making leaders through the public API, the way a real applicant becomes one."""

from __future__ import annotations

import uuid

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
