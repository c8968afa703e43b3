"""Orders' copy of each shopper's leader and each leader's status and tier.

Every change here bumps a version (`users.binding_version`, `leaders.terms_version`) and
is sent to orders twice: as an event in the same transaction (`shopper.bound`,
`leader.status_changed`, `leader.tier_changed`: it arrives whatever happens), and, for
the changes a person makes and acts on at once (a shopper choosing a pickup point, staff
suspending a leader), pushed to orders right after the commit, so the next order sees
it. Orders keeps the highest version of each row, so the two may arrive in any order.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from sqlalchemy import text

from services.common.http import ServiceClient

log = structlog.get_logger()
orders_client = ServiceClient("orders")
PUSH_BATCH = 5000  # rows per push (a handover can move a whole group)


def binding(shopper_id: int, leader_id: int, version: int) -> dict:
    return {"shopper_id": shopper_id, "leader_id": leader_id, "version": version}


def terms(leader_id: int, status: str, tier: str, version: int) -> dict:
    return {"leader_id": leader_id, "status": status, "tier": tier, "version": version}


async def push(db, *, shoppers: Sequence[int] = (), leaders: Sequence[int] = ()) -> None:
    """After the commit: orders' copy of these shoppers' bindings and leaders' terms, as
    stored now. Best effort, never failing the request whose change is committed: what
    fails here the events carry a moment later."""
    try:
        await _push(db, shoppers, leaders)
    except Exception as e:  # the database or orders, down right now: the events follow
        log.warning("projection_push_deferred", error=repr(e))


async def _push(db, shoppers: Sequence[int], leaders: Sequence[int]) -> None:
    async with db.read() as s:
        bindings = [
            binding(*r)
            for r in (
                await s.execute(
                    text(
                        "SELECT id, bound_leader_id, binding_version FROM leaders.users "
                        "WHERE id = ANY(:ids) AND bound_leader_id IS NOT NULL"
                    ),
                    {"ids": list(shoppers)},
                )
            ).all()
        ]
        leader_terms = [
            terms(*r)
            for r in (
                await s.execute(
                    text(
                        "SELECT id, status, tier, terms_version FROM leaders.leaders "
                        "WHERE id = ANY(:ids)"
                    ),
                    # with the terms of the leaders these shoppers are bound to now
                    {"ids": sorted({*leaders, *(b["leader_id"] for b in bindings)})},
                )
            ).all()
        ]
    for i in range(0, max(len(bindings), len(leader_terms)), PUSH_BATCH):
        await orders_client.post(
            "/internal/leader-projection",
            json={
                "bindings": bindings[i : i + PUSH_BATCH],
                "leaders": leader_terms[i : i + PUSH_BATCH],
            },
        )
