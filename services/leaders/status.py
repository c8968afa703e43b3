"""Suspend, reinstate, terminate: by staff with a reason, or by a rule (trial, complaints)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.clock import clock
from services.common.errors import Conflict
from services.common.events import emit_event
from services.contracts.events import LeaderStatusChanged

from . import projection
from .models import SCHEMA, LeaderStatus
from .service import get_leader


class StatusConflict(Conflict):
    code = "leader_status_conflict"


ALLOWED_FROM = {
    LeaderStatus.suspended: ("active",),
    LeaderStatus.active: ("suspended",),
    LeaderStatus.terminated: ("active", "suspended"),
}


async def change(
    s: AsyncSession, leader_id: int, to: LeaderStatus, reason: str, by: int | None
) -> str | None:
    """Move the leader to `to` if its current status allows; returns the old status."""
    # the row lock makes the read and the move one step under concurrent changes
    current = (
        await s.execute(
            text("SELECT status FROM leaders.leaders WHERE id = :id FOR UPDATE"), {"id": leader_id}
        )
    ).scalar_one_or_none()
    if current not in ALLOWED_FROM[to]:
        return None
    tier, version = (
        await s.execute(
            text(
                "UPDATE leaders.leaders SET status = :to, terms_version = terms_version + 1 "
                "WHERE id = :id RETURNING tier, terms_version"
            ),
            {"to": to.value, "id": leader_id},
        )
    ).one()
    row = (current,)
    await s.execute(
        text(
            "INSERT INTO leaders.status_changes (leader_id, from_status, to_status, reason, "
            "changed_by, created_at) VALUES (:l, :f, :t, :r, :by, :now)"
        ),
        {"l": leader_id, "f": row[0], "t": to.value, "r": reason, "by": by, "now": clock.now()},
    )
    await emit_event(
        s,
        SCHEMA,
        LeaderStatusChanged(
            from_status=row[0],
            to_status=to.value,
            reason=reason,
            # the leader's terms as of this change, for orders' copy (projection.py)
            **projection.terms(leader_id, to.value, tier, version),
        ),
    )
    return row[0]


async def change_or_refuse(
    s: AsyncSession, leader_id: int, to: LeaderStatus, reason: str, by: int
) -> None:
    leader = await get_leader(s, leader_id)
    if await change(s, leader_id, to, reason, by) is None:
        raise StatusConflict(f"a {leader.status} leader cannot become {to.value}")
