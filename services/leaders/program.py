"""Complaints, training, handover, invite codes and the leader's dashboard."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any, cast

from sqlalchemy import Row, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.clock import clock, local_datetime
from services.common.errors import Conflict, Forbidden, InvalidInput, NotFound
from services.common.events import emit_events
from services.common.settings import get_settings
from services.contracts.events import ShopperBound

from . import projection, status
from .applications import new_invite_code
from .models import SCHEMA, Complaint, LeaderStatus, TrainingSession
from .service import LeaderNotActive, get_leader

# --- complaints ----------------------------------------------------------------------------


class ComplaintNotOpen(Conflict):
    code = "complaint_not_open"


async def file_complaint(
    s: AsyncSession, shopper_id: int, leader_id: int, order_id: int, reason: str
) -> Complaint:
    fact = (
        await s.execute(
            text("SELECT shopper_id, leader_id FROM leaders.order_facts WHERE order_id = :o"),
            {"o": order_id},
        )
    ).first()
    if fact is None or fact.shopper_id is None:
        raise NotFound(f"order {order_id} is not known (yet)", code="order_not_found")
    if fact.shopper_id != shopper_id:
        raise Forbidden("you can only complain about your own orders", code="not_your_order")
    if fact.leader_id != leader_id:
        raise InvalidInput("that order was not with this leader", code="not_this_leaders_order")
    complaint = Complaint(
        leader_id=leader_id,
        shopper_id=shopper_id,
        order_id=order_id,
        reason=reason,
        created_at=clock.now(),
    )
    s.add(complaint)
    try:
        await s.flush()
    except IntegrityError as e:
        raise Conflict(
            "you already complained about this order", code="complaint_already_filed"
        ) from e
    return complaint


async def resolve_complaint(
    s: AsyncSession, complaint_id: int, upheld: bool, note: str, staff_id: int
) -> Complaint:
    row = (
        await s.execute(
            text(
                "UPDATE leaders.complaints SET status = :st, note = :n, resolved_by = :by, "
                "resolved_at = :now WHERE id = :id AND status = 'open' RETURNING leader_id"
            ),
            {
                "st": "upheld" if upheld else "dismissed",
                "n": note,
                "by": staff_id,
                "now": clock.now(),
                "id": complaint_id,
            },
        )
    ).first()
    complaint = await s.get(Complaint, complaint_id)
    if complaint is None:
        raise NotFound(f"complaint {complaint_id} does not exist", code="complaint_not_found")
    if row is None:
        raise ComplaintNotOpen(f"complaint {complaint_id} was already resolved")
    await s.refresh(complaint)
    if upheld:
        st = get_settings()
        count = (
            await s.execute(
                text(
                    "SELECT count(*) FROM leaders.complaints WHERE leader_id = :l AND "
                    "status = 'upheld' AND created_at >= :since"
                ),
                {"l": row[0], "since": clock.now() - timedelta(days=st.complaint_window_days)},
            )
        ).scalar_one()
        if count >= st.complaint_suspend_limit:
            await status.change(
                s,
                row[0],
                LeaderStatus.suspended,
                f"rule: {count} upheld complaints in {st.complaint_window_days} days",
                None,
            )
    return complaint


async def list_complaints(
    s: AsyncSession, *, leader_id: int | None, status_: str | None, after_id: int | None, limit: int
) -> list[Row[Any]]:
    q = "SELECT * FROM leaders.complaints WHERE true"
    params: dict = {"n": limit + 1}
    if leader_id is not None:
        q += " AND leader_id = :l"
        params["l"] = leader_id
    if status_:
        q += " AND status = :s"
        params["s"] = status_
    if after_id:
        q += " AND id < :a"
        params["a"] = after_id
    # Result.all() returns a list; SQLAlchemy annotates it as a Sequence (also below)
    return cast(
        list[Row[Any]], (await s.execute(text(q + " ORDER BY id DESC LIMIT :n"), params)).all()
    )


# --- training ------------------------------------------------------------------------------


async def create_session(
    s: AsyncSession, kind: str, topic: str, starts_at: datetime, by: int
) -> TrainingSession:
    session = TrainingSession(kind=kind, topic=topic, starts_at=starts_at, created_by=by)
    s.add(session)
    await s.flush()
    return session


async def record_attendance(
    s: AsyncSession, session_id: int, leader_ids: list[int], by: int
) -> list[int]:
    session = await s.get(TrainingSession, session_id)
    if session is None:
        raise NotFound(f"session {session_id} does not exist", code="session_not_found")
    known = set(
        (
            await s.execute(
                text("SELECT id FROM leaders.leaders WHERE id = ANY(:ids)"), {"ids": leader_ids}
            )
        ).scalars()
    )
    unknown = sorted(set(leader_ids) - known)
    if unknown:
        raise NotFound(f"no such leaders: {unknown}", code="leader_not_found")
    added = list(
        (
            await s.execute(
                text(
                    "INSERT INTO leaders.training_attendance (session_id, leader_id, recorded_by, "
                    "recorded_at) SELECT :s, unnest(CAST(:ids AS int[])), :by, :now "
                    "ON CONFLICT DO NOTHING RETURNING leader_id"
                ),
                {"s": session_id, "ids": leader_ids, "by": by, "now": clock.now()},
            )
        ).scalars()
    )
    if session.kind == "onboarding":
        await s.execute(
            text("UPDATE leaders.leaders SET onboarding_done = true WHERE id = ANY(:ids)"),
            {"ids": leader_ids},
        )
    return added


async def list_sessions(s: AsyncSession, after_id: int | None, limit: int) -> list[Row[Any]]:
    q = "SELECT * FROM leaders.training_sessions"
    params: dict = {"n": limit + 1}
    if after_id:
        q += " WHERE id < :a"
        params["a"] = after_id
    # Result.all() returns a list; SQLAlchemy annotates it as a Sequence (also below)
    return cast(
        list[Row[Any]], (await s.execute(text(q + " ORDER BY id DESC LIMIT :n"), params)).all()
    )


# --- handover and growth -------------------------------------------------------------------


class SameLeader(InvalidInput):
    code = "same_leader"


async def handover(s: AsyncSession, from_id: int, to_id: int, reason: str, by: int) -> list[int]:
    """Move a group's shoppers to another leader; returns the shoppers moved. Orders
    already placed keep the leader and rate they snapshotted; every order from now on
    goes (and pays commission) to the new leader."""
    if from_id == to_id:
        raise SameLeader("a group cannot be handed to its own leader")
    await get_leader(s, from_id)
    target = await get_leader(s, to_id)
    if target.status != LeaderStatus.active:
        raise LeaderNotActive("the new leader is not active")
    rows = (
        await s.execute(
            text(
                "UPDATE leaders.users SET bound_leader_id = :to, bound_at = :now, "
                "binding_version = binding_version + 1 "
                "WHERE bound_leader_id = :from RETURNING id, binding_version"
            ),
            {"to": to_id, "from": from_id, "now": clock.now()},
        )
    ).all()
    moved = len(rows)
    if rows:
        await emit_events(
            s,
            SCHEMA,
            [ShopperBound(**projection.binding(u, to_id, version)) for u, version in rows],
        )
    await s.execute(
        text(
            "INSERT INTO leaders.handovers (from_leader_id, to_leader_id, shoppers_moved, reason, "
            "created_by, created_at) VALUES (:f, :t, :n, :r, :by, :now)"
        ),
        {"f": from_id, "t": to_id, "n": moved, "r": reason, "by": by, "now": clock.now()},
    )
    return [u for u, _ in rows]


async def invite_code_of(s: AsyncSession, leader_id: int) -> str:
    # leaders created before invite codes existed get one on first use
    await s.execute(
        text("UPDATE leaders.leaders SET invite_code = :c WHERE id = :l AND invite_code IS NULL"),
        {"c": new_invite_code(), "l": leader_id},
    )
    return (
        await s.execute(
            text("SELECT invite_code FROM leaders.leaders WHERE id = :l"), {"l": leader_id}
        )
    ).scalar_one()


async def leader_by_invite(s: AsyncSession, code: str) -> int:
    row = (
        await s.execute(
            text("SELECT id FROM leaders.leaders WHERE invite_code = :c"), {"c": code.upper()}
        )
    ).first()
    if row is None:
        raise NotFound("no leader has this invite code", code="invite_not_found")
    return row[0]


def period_bounds(start: date, end: date) -> tuple[datetime, datetime]:
    tz = get_settings().timezone
    return local_datetime(start, time(0), tz), local_datetime(end + timedelta(days=1), time(0), tz)


async def dashboard(s: AsyncSession, leader_id: int, start: date, end: date) -> dict:
    lo, hi = period_bounds(start, end)
    row = (
        await s.execute(
            text(
                """
                WITH o AS (
                    SELECT f.order_id, f.shopper_id, f.total_fen - GREATEST(f.refunded_fen,
                        COALESCE((SELECT sum(r.amount_fen) FROM leaders.refund_facts r
                                  WHERE r.order_id = f.order_id), 0)) AS net_fen
                    FROM leaders.order_facts f
                    WHERE f.leader_id = :l AND f.paid_at >= :lo AND f.paid_at < :hi
                      AND f.cancelled_at IS NULL
                ), b AS (SELECT shopper_id, count(*) AS n FROM o GROUP BY shopper_id)
                SELECT
                    (SELECT count(*) FROM o) AS orders,
                    (SELECT COALESCE(sum(GREATEST(net_fen, 0)), 0) FROM o) AS gmv_fen,
                    (SELECT count(*) FROM b) AS active_buyers,
                    (SELECT count(*) FROM b WHERE n >= 2) AS repeat_buyers,
                    (SELECT count(*) FROM leaders.users u WHERE u.bound_leader_id = :l
                        AND u.bound_at >= :lo AND u.bound_at < :hi) AS new_members,
                    (SELECT count(*) FROM leaders.users u WHERE u.bound_leader_id = :l) AS members
                """
            ),
            {"l": leader_id, "lo": lo, "hi": hi},
        )
    ).one()

    def ratio(a: int, b: int) -> str:
        return f"{(a / b):.4f}" if b else "0.0000"

    return {
        "leader_id": leader_id,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "orders": row.orders,
        "gmv_fen": int(row.gmv_fen),
        "active_buyers": row.active_buyers,
        "new_members": row.new_members,
        "members": row.members,
        # buyers with two or more orders in the period, of all buyers
        "repeat_purchase_rate": ratio(row.repeat_buyers, row.active_buyers),
        # members who bought in the period, of the group's members
        "conversion_rate": ratio(row.active_buyers, row.members),
    }
