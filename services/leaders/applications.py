"""Becoming a leader: apply, staff approve (a leader in `preparation`) or reject."""

from __future__ import annotations

import secrets

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from services.common.clock import clock
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.settings import get_settings

from .models import ApplicationStatus, Leader, LeaderApplication


class GroupTooSmall(InvalidInput):
    code = "group_too_small"


class ApplicationOpen(Conflict):
    code = "application_already_open"


class AlreadyLeader(Conflict):
    code = "already_leader"


class ApplicationNotPending(Conflict):
    code = "application_not_pending"


def new_invite_code() -> str:
    # 8 characters without look-alikes (0/O, 1/I): easy to read out in a chat group
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


async def apply(s: AsyncSession, user_id: int, data: dict) -> LeaderApplication:
    st = get_settings()
    if data["group_size"] < st.min_group_size:
        raise GroupTooSmall(f"a leader's chat group needs at least {st.min_group_size} members")
    leader = (await s.execute(select(Leader.id).where(Leader.user_id == user_id))).first()
    if leader is not None:
        raise AlreadyLeader("you are already a leader")
    app = LeaderApplication(user_id=user_id, **data)
    s.add(app)
    try:
        await s.flush()
    except IntegrityError as e:
        raise ApplicationOpen("you already have an application waiting for review") from e
    return app


async def get_application(s: AsyncSession, app_id: int) -> LeaderApplication:
    app = await s.get(LeaderApplication, app_id)
    if app is None:
        raise NotFound(f"application {app_id} does not exist", code="application_not_found")
    return app


async def latest_of_user(s: AsyncSession, user_id: int) -> LeaderApplication | None:
    q = (
        select(LeaderApplication)
        .where(LeaderApplication.user_id == user_id)
        .order_by(col(LeaderApplication.id).desc())
        .limit(1)
    )
    return (await s.execute(q)).scalar_one_or_none()


async def list_applications(
    s: AsyncSession, status: str | None, after_id: int | None, limit: int
) -> list[LeaderApplication]:
    q = select(LeaderApplication).order_by(col(LeaderApplication.id).desc()).limit(limit + 1)
    if status:
        q = q.where(LeaderApplication.status == status)
    if after_id:
        q = q.where(col(LeaderApplication.id) < after_id)
    return list((await s.execute(q)).scalars())


async def _decide(s: AsyncSession, app_id: int, status: str, staff_id: int, reason: str | None):
    row = (
        await s.execute(
            text(
                "UPDATE leaders.applications SET status = :st, reason = :r, decided_by = :by, "
                "decided_at = :now WHERE id = :id AND status = 'pending' RETURNING id"
            ),
            {"st": status, "r": reason, "by": staff_id, "now": clock.now(), "id": app_id},
        )
    ).first()
    if row is None:
        await get_application(s, app_id)
        raise ApplicationNotPending(f"application {app_id} was already decided")
    return await get_application(s, app_id)


async def approve(s: AsyncSession, app_id: int, staff_id: int) -> LeaderApplication:
    app = await _decide(s, app_id, ApplicationStatus.approved, staff_id, None)
    now = clock.now()
    leader_id = (
        await s.execute(
            text(
                "INSERT INTO leaders.leaders (user_id, status, tier, community_name, pickup_address,"
                " pickup_hours, phone, group_size, latitude, longitude, created_at, tier_since, "
                "invite_code) VALUES (:u, 'active', 'preparation', :c, :a, :h, :p, :g, :lat, :lng, "
                ":now, :now, :code) ON CONFLICT (user_id) DO NOTHING RETURNING id"
            ),
            {
                "u": app.user_id,
                "c": app.community_name,
                "a": app.pickup_address,
                "h": app.pickup_hours,
                "p": app.phone,
                "g": app.group_size,
                "lat": app.latitude,
                "lng": app.longitude,
                "now": now,
                "code": new_invite_code(),
            },
        )
    ).scalar_one_or_none()
    if leader_id is None:
        raise AlreadyLeader("this applicant is already a leader")
    await s.execute(
        text("UPDATE leaders.applications SET leader_id = :l WHERE id = :id"),
        {"l": leader_id, "id": app_id},
    )
    app.leader_id = leader_id
    return app


async def reject(s: AsyncSession, app_id: int, staff_id: int, reason: str) -> LeaderApplication:
    return await _decide(s, app_id, ApplicationStatus.rejected, staff_id, reason)
