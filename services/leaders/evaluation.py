"""The daily tier evaluation: metrics from our projection of order facts, the pure rules
in tiers.py, and the changes they call for, each leader in its own transaction.

An `evaluations` row per (leader, local date) is claimed first with ON CONFLICT DO
NOTHING: a second run on the same day, or a concurrent one, finds the claim and leaves
the leader alone, so one day makes at most one change.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import orjson
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.clock import clock, local_today
from services.common.events import emit
from services.common.settings import get_settings

from . import status, tiers
from .models import SCHEMA, Leader, LeaderStatus

log = structlog.get_logger()

METRICS_SQL = text(
    """
    WITH o AS (
        SELECT f.order_id, f.shopper_id, f.total_fen - GREATEST(f.refunded_fen, COALESCE(
            (SELECT sum(r.amount_fen) FROM leaders.refund_facts r WHERE r.order_id = f.order_id),
            0)) AS net_fen
        FROM leaders.order_facts f
        WHERE f.leader_id = :l AND f.paid_at >= :start AND f.paid_at < :end
          AND f.cancelled_at IS NULL
    )
    SELECT
        (SELECT COALESCE(sum(GREATEST(net_fen, 0)), 0) FROM o) AS gmv_fen,
        (SELECT count(DISTINCT shopper_id) FROM o WHERE net_fen > 0) AS buyers,
        (SELECT count(*) FROM o) AS orders,
        (SELECT count(*) FROM leaders.order_facts f WHERE f.leader_id = :l
            AND f.completed_at >= :start AND f.completed_at < :end) AS completed_orders,
        (SELECT count(*) FROM leaders.complaints c WHERE c.leader_id = :l
            AND c.status = 'upheld' AND c.created_at >= :cstart AND c.created_at < :end)
            AS upheld_complaints,
        (SELECT count(*) FROM leaders.training_attendance a
            JOIN leaders.training_sessions t ON t.id = a.session_id
            WHERE a.leader_id = :l AND t.kind = 'regular'
            AND t.starts_at >= :start AND t.starts_at < :end) AS trainings
    """
)


async def metrics_of(s: AsyncSession, leader: Leader, now: datetime) -> tiers.Metrics:
    st = get_settings()
    row = (
        await s.execute(
            METRICS_SQL,
            {
                "l": leader.id,
                "start": now - timedelta(days=st.tier_window_days),
                "cstart": now - timedelta(days=st.complaint_window_days),
                "end": now,
            },
        )
    ).one()
    return tiers.Metrics(
        gmv_fen=int(row.gmv_fen),
        buyers=row.buyers,
        orders=row.orders,
        completed_orders=row.completed_orders,
        upheld_complaints=row.upheld_complaints,
        trainings=row.trainings,
        onboarding_done=leader.onboarding_done,
        deposit_paid=leader.deposit_status == "paid",
    )


async def progress(s: AsyncSession, leader: Leader) -> dict:
    """What `/leaders/me` shows: this window's numbers against the next bar."""
    now = clock.now()
    m = await metrics_of(s, leader, now)
    checks = tiers.bar_checks(leader.tier, m, get_settings())
    return {
        "window_days": get_settings().tier_window_days,
        "next_tier": tiers.next_tier(leader.tier),
        "metrics": m.as_dict(),
        "requirements": [c.__dict__ for c in checks],
        "below_bar_since": leader.below_bar_since.isoformat() if leader.below_bar_since else None,
    }


async def evaluate_leader(db, leader_id: int) -> dict | None:
    """Evaluate one leader for today; returns the tier change made, if any."""
    st = get_settings()
    now = clock.now()
    today = local_today(st.timezone)
    async with db.transaction() as s:
        claimed = (
            await s.execute(
                text(
                    "INSERT INTO leaders.evaluations (leader_id, evaluation_date, tier_before, "
                    "outcome, metrics, created_at) SELECT id, :d, tier, 'pending', '{}'::jsonb, :now"
                    " FROM leaders.leaders WHERE id = :l AND status = 'active' "
                    "ON CONFLICT DO NOTHING RETURNING leader_id"
                ),
                {"l": leader_id, "d": today, "now": now},
            )
        ).first()
        if claimed is None:
            return None
        leader = (
            await s.execute(
                text("SELECT * FROM leaders.leaders WHERE id = :l FOR UPDATE"), {"l": leader_id}
            )
        ).one()
        leader = Leader(**leader._mapping)
        m = await metrics_of(s, leader, now)
        decision = tiers.decide(
            tier=leader.tier,
            metrics=m,
            leader_since=leader.created_at,
            below_bar_since=leader.below_bar_since,
            now=now,
            st=st,
        )
        record = {
            "metrics": m.as_dict(),
            "checks": [c.__dict__ for c in decision.checks],
            "window_days": st.tier_window_days,
        }
        change = None
        if decision.direction:
            await s.execute(
                text(
                    "UPDATE leaders.leaders SET tier = :t, tier_since = :now, below_bar_since = NULL"
                    " WHERE id = :l AND tier = :old"
                ),
                {"t": decision.tier, "now": now, "l": leader_id, "old": leader.tier},
            )
            change = {
                "leader_id": leader_id,
                "from_tier": leader.tier,
                "to_tier": decision.tier,
                "direction": decision.direction,
                "evaluation_date": today.isoformat(),
                "commission_rate": str(st.rate_for_tier(decision.tier)),
                "metrics": record,
            }
            await s.execute(
                text(
                    "INSERT INTO leaders.tier_history (leader_id, from_tier, to_tier, direction, "
                    "evaluation_date, metrics, created_at) VALUES (:l, :f, :t, :dir, :d, "
                    "CAST(:m AS jsonb), :now)"
                ),
                {
                    "l": leader_id,
                    "f": leader.tier,
                    "t": decision.tier,
                    "dir": decision.direction,
                    "d": today,
                    "m": orjson.dumps(record).decode(),
                    "now": now,
                },
            )
            await emit(s, SCHEMA, "leader.tier_changed", change)
        elif decision.below_bar_since != leader.below_bar_since:
            await s.execute(
                text("UPDATE leaders.leaders SET below_bar_since = :b WHERE id = :l"),
                {"b": decision.below_bar_since, "l": leader_id},
            )
        if decision.suspend_reason:
            await status.change(
                s, leader_id, LeaderStatus.suspended, f"rule: {decision.suspend_reason}", None
            )
        await s.execute(
            text(
                "UPDATE leaders.evaluations SET outcome = :o, metrics = CAST(:m AS jsonb) "
                "WHERE leader_id = :l AND evaluation_date = :d"
            ),
            {"o": decision.outcome, "m": orjson.dumps(record).decode(), "l": leader_id, "d": today},
        )
    return change


async def run_evaluations(db, leader_ids: list[int] | None = None) -> list[dict]:
    async with db.session() as s:
        q = "SELECT id FROM leaders.leaders WHERE status = 'active'"
        params: dict = {}
        if leader_ids is not None:
            q += " AND id = ANY(:ids)"
            params["ids"] = leader_ids
        ids = list((await s.execute(text(q + " ORDER BY id"), params)).scalars())
    changes = []
    for leader_id in ids:
        change = await evaluate_leader(db, leader_id)
        if change:
            changes.append(change)
    log.info("tier_evaluation_done", leaders=len(ids), changes=len(changes))
    return changes


async def tier_history(s: AsyncSession, leader_id: int, after_id: int | None, limit: int):
    q = "SELECT * FROM leaders.tier_history WHERE leader_id = :l"
    params: dict = {"l": leader_id, "n": limit + 1}
    if after_id:
        q += " AND id < :a"
        params["a"] = after_id
    return (await s.execute(text(q + " ORDER BY id DESC LIMIT :n"), params)).all()
