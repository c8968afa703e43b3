"""The daily tier evaluation: metrics from our projection of order facts, the pure rules
in tiers.py, and the changes they call for: set-based, a batch of leaders per transaction.

An evaluation that does something (a tier change, a suspension, a below-the-bar period
started) claims an `evaluations` row per (leader, local date) with ON CONFLICT DO
NOTHING: a second run on the same day, or a concurrent one, finds the claim and leaves
the leader alone, so one day makes at most one change. An evaluation that changes
nothing writes nothing: running it again is harmless, and at 50,000 leaders a row with
its metrics for each was a third of the run (bench scenario 5).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import orjson
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.clock import clock, local_today
from services.common.events import emit_events
from services.common.settings import get_settings
from services.contracts.events import LeaderTierChanged

from . import projection, status, tiers
from .models import SCHEMA, Leader, LeaderStatus

log = structlog.get_logger()

# Every leader's window metrics in one aggregate (the evaluation of 50,000 leaders is one
# scan of the projection, not 50,000 small queries). `{ids}` is the leaders asked for and
# `{only}` filters each scan to them: given ids, an index lookup each; for every active
# leader, no filter at all (not an ANY() over 50,000 ids in each of five scans).
_METRICS_SQL = """
    WITH ids AS ({ids}),
    o AS (
        SELECT f.order_id, f.leader_id, f.shopper_id, f.total_fen, f.refunded_fen
        FROM leaders.order_facts f
        WHERE {only} f.paid_at >= :start AND f.paid_at < :end AND f.cancelled_at IS NULL
    ),
    refunds AS (
        SELECT r.order_id, sum(r.amount_fen) AS refunded_fen FROM leaders.refund_facts r
        JOIN leaders.order_facts f ON f.order_id = r.order_id
        WHERE {only} f.paid_at >= :start AND f.paid_at < :end AND f.cancelled_at IS NULL
        GROUP BY r.order_id
    ),
    net AS (
        SELECT o.leader_id, o.shopper_id,
            o.total_fen - GREATEST(o.refunded_fen, COALESCE(r.refunded_fen, 0)) AS net_fen
        FROM o LEFT JOIN refunds r ON r.order_id = o.order_id
    ),
    paid AS (
        SELECT leader_id, sum(GREATEST(net_fen, 0)) AS gmv_fen,
            count(DISTINCT shopper_id) FILTER (WHERE net_fen > 0) AS buyers, count(*) AS orders
        FROM net GROUP BY leader_id
    ),
    completed AS (
        SELECT f.leader_id, count(*) AS completed_orders FROM leaders.order_facts f
        WHERE {only} f.completed_at >= :start AND f.completed_at < :end
        GROUP BY f.leader_id
    ),
    complaints AS (
        SELECT c.leader_id, count(*) AS upheld_complaints FROM leaders.complaints c
        WHERE {only_c} c.status = 'upheld' AND c.created_at >= :cstart AND c.created_at < :end
        GROUP BY c.leader_id
    ),
    trainings AS (
        SELECT a.leader_id, count(*) AS trainings FROM leaders.training_attendance a
        JOIN leaders.training_sessions t ON t.id = a.session_id
        WHERE {only_a} t.kind = 'regular' AND t.starts_at >= :start AND t.starts_at < :end
        GROUP BY a.leader_id
    )
    SELECT ids.leader_id, COALESCE(p.gmv_fen, 0) AS gmv_fen, COALESCE(p.buyers, 0) AS buyers,
        COALESCE(p.orders, 0) AS orders, COALESCE(d.completed_orders, 0) AS completed_orders,
        COALESCE(c.upheld_complaints, 0) AS upheld_complaints,
        COALESCE(t.trainings, 0) AS trainings
    FROM ids LEFT JOIN paid p USING (leader_id) LEFT JOIN completed d USING (leader_id)
    LEFT JOIN complaints c USING (leader_id) LEFT JOIN trainings t USING (leader_id)
"""
METRICS_OF_IDS = text(
    _METRICS_SQL.format(
        ids="SELECT DISTINCT unnest(CAST(:ids AS int[])) AS leader_id",
        only="f.leader_id = ANY(CAST(:ids AS int[])) AND",
        only_c="c.leader_id = ANY(CAST(:ids AS int[])) AND",
        only_a="a.leader_id = ANY(CAST(:ids AS int[])) AND",
    )
)
METRICS_OF_ACTIVE = text(
    _METRICS_SQL.format(
        ids="SELECT id AS leader_id FROM leaders.leaders WHERE status = 'active'",
        only="",
        only_c="",
        only_a="",
    )
)

# leaders claimed and changed per transaction: row locks are held only for the few that
# change, and a failure loses one batch's work, not the run's
BATCH = 5000


def window_params(now: datetime, st=None) -> dict:
    st = st or get_settings()
    return {
        "start": now - timedelta(days=st.tier_window_days),
        "cstart": now - timedelta(days=st.complaint_window_days),
        "end": now,
    }


async def metrics_for(
    s: AsyncSession, leaders: list, now: datetime, *, all_active: bool = False
) -> dict[int, tiers.Metrics]:
    """Window metrics of each leader (rows with id, onboarding_done, deposit_status);
    `all_active` when `leaders` are (a subset of) every active leader: one unfiltered
    aggregate instead of one filtered by 50,000 ids."""
    if not leaders:
        return {}
    if all_active:
        rows = await s.execute(METRICS_OF_ACTIVE, window_params(now))
    else:
        ids = [lr.id for lr in leaders]
        rows = await s.execute(METRICS_OF_IDS, {"ids": ids, **window_params(now)})
    # plain tuples (leader_id, gmv, buyers, orders, completed, complaints, trainings): a
    # Row's attribute access cost more than the decisions at 50,000 leaders (cProfile)
    by_id = {t[0]: t for t in rows.all()}
    out = {}
    for lr in leaders:
        _, gmv, buyers, orders, completed, complaints, trainings = by_id[lr.id]
        out[lr.id] = tiers.Metrics(
            int(gmv),
            buyers,
            orders,
            completed,
            complaints,
            trainings,
            lr.onboarding_done,
            lr.deposit_status == "paid",
        )
    return out


async def metrics_of(s: AsyncSession, leader: Leader, now: datetime) -> tiers.Metrics:
    assert leader.id is not None  # a stored row has its id
    return (await metrics_for(s, [leader], now))[leader.id]


async def progress(s: AsyncSession, leader: Leader) -> dict:
    """What `/leaders/me` shows: this window's numbers against the next bar."""
    now = clock.now()
    m = await metrics_of(s, leader, now)
    checks = tiers.bar_checks(leader.tier, m, get_settings())
    return {
        "window_days": get_settings().tier_window_days,
        "next_tier": tiers.next_tier(leader.tier),
        "metrics": m.as_dict(),
        "requirements": [c.as_dict() for c in checks],
        "below_bar_since": leader.below_bar_since.isoformat() if leader.below_bar_since else None,
    }


async def _evaluate_batch(db, leaders: list, metrics: dict, now: datetime, today) -> list[dict]:
    """Decide and record a batch of leaders in one transaction; returns the tier changes.

    The claim records each leader's evaluation for today with ON CONFLICT DO NOTHING, and
    only the leaders this run claimed are changed, so a concurrent or repeated run changes
    nobody twice. A change is a conditional UPDATE on the tier read, so a leader moved
    meanwhile (by staff) is left alone.
    """
    st = get_settings()
    decided = {}
    for lr in leaders:
        m = metrics[lr.id]
        decision = tiers.decide(
            tier=lr.tier,
            metrics=m,
            leader_since=lr.created_at,
            below_bar_since=lr.below_bar_since,
            now=now,
            st=st,
        )
        # only an evaluation with an effect is claimed and recorded (module docstring)
        if (
            decision.direction
            or decision.suspend_reason
            or decision.below_bar_since != lr.below_bar_since
        ):
            record = {
                "metrics": m.as_dict(),
                "checks": decision.checks,  # orjson writes the dataclasses as objects
                "window_days": st.tier_window_days,
            }
            decided[lr.id] = (lr, decision, record)
    if not decided:
        return []
    async with db.transaction() as s:
        order = sorted(decided)
        claimed = set(
            (
                await s.execute(
                    text(
                        "INSERT INTO leaders.evaluations (leader_id, evaluation_date, tier_before, "
                        "outcome, metrics, created_at) SELECT v.l, :d, v.t, v.o, v.m, :now FROM "
                        "unnest(CAST(:l AS int[]), CAST(:t AS text[]), CAST(:o AS text[]), "
                        "CAST(:m AS jsonb[])) AS v(l, t, o, m) "
                        "ON CONFLICT DO NOTHING RETURNING leader_id"
                    ),
                    {
                        "d": today,
                        "now": now,
                        "l": order,
                        "t": [decided[i][0].tier for i in order],
                        "o": [decided[i][1].outcome for i in order],
                        "m": [orjson.dumps(decided[i][2]).decode() for i in order],
                    },
                )
            ).scalars()
        )
        moving = [i for i in sorted(claimed) if decided[i][1].direction]
        # moved leader -> the version of its terms after the move (orders' copy)
        moved = dict(
            iter(
                await s.execute(
                    text(
                        "UPDATE leaders.leaders l SET tier = v.t, tier_since = :now, "
                        "below_bar_since = NULL, terms_version = l.terms_version + 1 "
                        "FROM unnest(CAST(:l AS int[]), "
                        "CAST(:t AS text[]), CAST(:old AS text[])) AS v(l, t, old) "
                        "WHERE l.id = v.l AND l.tier = v.old AND l.status = 'active' "
                        "RETURNING l.id, l.terms_version"
                    ),
                    {
                        "now": now,
                        "l": moving,
                        "t": [decided[i][1].tier for i in moving],
                        "old": [decided[i][0].tier for i in moving],
                    },
                )
            )
            if moving
            else ()
        )
        events = [
            LeaderTierChanged(
                from_tier=decided[i][0].tier,
                to_tier=decided[i][1].tier,
                direction=decided[i][1].direction,
                evaluation_date=today,
                commission_rate=st.rate_for_tier(decided[i][1].tier),
                metrics=decided[i][2] | {"checks": [c.as_dict() for c in decided[i][1].checks]},
                # the leader's terms as of this change, for orders' copy (projection.py)
                **projection.terms(i, "active", decided[i][1].tier, moved[i]),
            )
            for i in moving
            if i in moved
        ]
        # the history, the event and the answer are the same dicts
        changes = [e.model_dump(mode="json") for e in events]
        if changes:
            await s.execute(
                text(
                    "INSERT INTO leaders.tier_history (leader_id, from_tier, to_tier, direction, "
                    "evaluation_date, metrics, created_at) SELECT v.l, v.f, v.t, v.dir, :d, v.m, "
                    ":now FROM unnest(CAST(:l AS int[]), CAST(:f AS text[]), CAST(:t AS text[]),"
                    " CAST(:dir AS text[]), CAST(:m AS jsonb[])) AS v(l, f, t, dir, m)"
                ),
                {
                    "d": today,
                    "now": now,
                    "l": [c["leader_id"] for c in changes],
                    "f": [c["from_tier"] for c in changes],
                    "t": [c["to_tier"] for c in changes],
                    "dir": [c["direction"] for c in changes],
                    "m": [orjson.dumps(c["metrics"]).decode() for c in changes],
                },
            )
            await emit_events(s, SCHEMA, events)
        below = [
            i
            for i in sorted(claimed)
            if not decided[i][1].direction
            and decided[i][1].below_bar_since != decided[i][0].below_bar_since
        ]
        if below:
            await s.execute(
                text(
                    "UPDATE leaders.leaders l SET below_bar_since = v.b FROM unnest("
                    "CAST(:l AS int[]), CAST(:b AS timestamptz[]), CAST(:old AS text[])) "
                    "AS v(l, b, old) WHERE l.id = v.l AND l.tier = v.old"
                ),
                {
                    "l": below,
                    "b": [decided[i][1].below_bar_since for i in below],
                    "old": [decided[i][0].tier for i in below],
                },
            )
        for i in sorted(claimed):
            reason = decided[i][1].suspend_reason
            if reason and (not decided[i][1].direction or i in moved):
                await status.change(s, i, LeaderStatus.suspended, f"rule: {reason}", None)
    return changes


async def run_evaluations(db, leader_ids: list[int] | None = None) -> list[dict]:
    """Today's evaluation of every active leader (or of `leader_ids`): their metrics in
    one aggregate, then decisions and claims in batches."""
    st = get_settings()
    now = clock.now()
    today = local_today(st.timezone)
    async with db.session() as s:
        q = (
            "SELECT id, tier, created_at, below_bar_since, onboarding_done, deposit_status "
            "FROM leaders.leaders WHERE status = 'active' AND NOT EXISTS (SELECT 1 FROM "
            "leaders.evaluations e WHERE e.leader_id = leaders.id AND e.evaluation_date = :d)"
        )
        params: dict = {"d": today}
        if leader_ids is not None:
            q += " AND id = ANY(:ids)"
            params["ids"] = leader_ids
        leaders = (await s.execute(text(q + " ORDER BY id"), params)).all()
        metrics = await metrics_for(s, leaders, now, all_active=leader_ids is None)
    changes = []
    for i in range(0, len(leaders), BATCH):
        changes += await _evaluate_batch(db, leaders[i : i + BATCH], metrics, now, today)
    log.info("tier_evaluation_done", leaders=len(leaders), changes=len(changes))
    return changes


async def tier_history(s: AsyncSession, leader_id: int, after_id: int | None, limit: int):
    q = "SELECT * FROM leaders.tier_history WHERE leader_id = :l"
    params: dict = {"l": leader_id, "n": limit + 1}
    if after_id:
        q += " AND id < :a"
        params["a"] = after_id
    return (await s.execute(text(q + " ORDER BY id DESC LIMIT :n"), params)).all()
