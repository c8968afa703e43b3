"""Commissions per order line: recorded on pickup (pending), released after the
after-sales window (available), reduced or clawed back by refunds; balances.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from services.common.clock import clock
from services.common.money import commission_for
from services.common.settings import get_settings
from services.contracts.events import OrderPickedUp, OrderRefunded

from .. import ledger
from ..models import Commission

log = structlog.get_logger()


async def record_commissions(s: AsyncSession, e: OrderPickedUp) -> int:
    """On `order.picked_up`: one pending commission per line at the order's frozen rate."""
    leader_id, rate, picked_up_at = e.leader_id, e.commission_rate, e.picked_up_at
    available_at = picked_up_at + timedelta(days=get_settings().commission_release_days)
    created = 0
    await _lock_lines(s, [line.line_id for line in e.lines])
    for line in e.lines:
        base = line.base_fen
        if base <= 0:
            continue
        amount = commission_for(base, rate)
        row = (
            await s.execute(
                text(
                    "INSERT INTO settlement.commissions (order_line_id, order_id, leader_id, leader_tier, "
                    "base_fen, rate, amount_fen, status, picked_up_at, available_at, created_at) VALUES "
                    "(:line, :order, :leader, :tier, :base, :rate, :amount, 'pending', :at, :avail, now()) "
                    "ON CONFLICT (order_line_id) DO NOTHING RETURNING id"
                ),
                {
                    "line": line.line_id,
                    "order": e.order_id,
                    "leader": leader_id,
                    "tier": e.leader_tier,
                    "base": base,
                    "rate": rate,
                    "amount": amount,
                    "at": picked_up_at,
                    "avail": available_at,
                },
            )
        ).scalar_one_or_none()
        if row is None:
            continue
        created += 1
        if amount:
            await ledger.post(
                s,
                f"commission:{line.line_id}",
                "commission_earned",
                [
                    ledger.Leg(ledger.leader_account(leader_id, ledger.PENDING), amount),
                    ledger.Leg(ledger.COMMISSION_EXPENSE, -amount),
                ],
                memo=f"order {e.order_id} line {line.line_id}",
            )
        # after-sales refunds of this line that were consumed before this pickup
        waiting = (
            await s.execute(
                text(
                    "UPDATE settlement.commission_refunds SET commission_id = :c "
                    "WHERE order_line_id = :l AND commission_id IS NULL "
                    "RETURNING refund_id, amount_fen"
                ),
                {"c": row, "l": line.line_id},
            )
        ).all()
        for w in sorted(waiting):
            await _claw_back(
                s, row, w.refund_id, line.line_id, w.amount_fen, f"refund {w.refund_id}"
            )
    return created


async def release_due(db, batch: int | None = None) -> int:
    """Move every commission whose after-sales window has passed from pending to available.

    Set-based: one conditional UPDATE claims a batch (SKIP LOCKED, so concurrent runs
    share the work) and one ledger transfer per leader moves the money, in the same
    transaction. A leader's receivable (a debt from an earlier claw-back) is paid first.
    """
    batch = batch or get_settings().commission_release_batch
    released = 0
    # keyset walk along the partial index (available_at, id) of pending lines: each batch
    # starts after the last line the previous one looked at, so it does not step again
    # over the entries this run already released (dead until vacuumed); ordering by id
    # alone walked the primary key over every released line (quadratic in a backlog)
    after_at, after_id = datetime.min.replace(tzinfo=UTC), 0
    while True:
        async with db.transaction() as s:
            # claimed rows are re-checked (`c.status = 'pending'`): a line a concurrent run
            # released first is skipped, so no line is ever released twice; summed per
            # leader in the database, so a batch sends back a row per leader
            per_leader = (
                await s.execute(
                    text(
                        "WITH due AS (SELECT ctid, id, available_at FROM settlement.commissions "
                        "WHERE status = 'pending' AND available_at <= :now AND "
                        "(available_at, id) > (:after_at, :after_id) "
                        "ORDER BY available_at, id LIMIT :n), "
                        "rel AS (UPDATE settlement.commissions c SET status = 'available', "
                        "released_at = :now FROM due WHERE c.ctid = due.ctid AND "
                        "c.status = 'pending' "
                        "RETURNING c.id, c.leader_id, c.amount_fen - c.reversed_fen AS amount), "
                        "last AS (SELECT available_at, id, (SELECT count(*) FROM due) AS seen "
                        "FROM due ORDER BY available_at DESC, id DESC LIMIT 1) "
                        "SELECT r.leader_id, sum(r.amount) AS amount, min(r.id) AS first_id, "
                        "count(r.id) AS n, last.available_at AS last_at, last.id AS last_id, "
                        "last.seen FROM last LEFT JOIN rel r ON true "
                        "GROUP BY r.leader_id, last.available_at, last.id, last.seen "
                        "ORDER BY r.leader_id"
                    ),
                    {"now": clock.now(), "n": batch, "after_at": after_at, "after_id": after_id},
                )
            ).all()
            seen = per_leader[0].seen if per_leader else 0
            if per_leader:
                after_at, after_id = per_leader[0].last_at, per_leader[0].last_id
            per_leader = [r for r in per_leader if r.leader_id is not None]
            by_leader = {r.leader_id: r for r in per_leader}
            claimed = sum(r.n for r in per_leader)
            codes = [
                ledger.leader_account(leader, kind)
                for leader in by_leader
                for kind in (ledger.PENDING, ledger.AVAILABLE, ledger.RECEIVABLE)
            ]
            held = await ledger.lock_balances(s, codes) if codes else {}
            postings = []
            for leader, r in sorted(by_leader.items()):
                amount = int(r.amount)
                if amount == 0:
                    continue
                debt = -held[ledger.leader_account(leader, ledger.RECEIVABLE)]
                repay = min(amount, debt)
                postings.append(
                    ledger.Posting(
                        f"release:{leader}:{r.first_id}",
                        "commission_released",
                        [
                            ledger.Leg(ledger.leader_account(leader, ledger.PENDING), -amount),
                            ledger.Leg(
                                ledger.leader_account(leader, ledger.AVAILABLE), amount - repay
                            ),
                            ledger.Leg(ledger.leader_account(leader, ledger.RECEIVABLE), repay),
                        ],
                        memo=f"{r.n} commissions released",
                    )
                )
            # one statement per step for the whole batch, not a round trip per leader
            await ledger.post_many(s, postings)
            released += claimed
        if seen < batch:
            return released


# one lock per order line, taken by both the pickup and the refund consumer, so an
# after-sales refund consumed before its pickup is either seen by the pickup or sees it.
# All of an event's lines are locked up front, in id order, before any account row, so
# two consumers never wait on each other in a cycle.
_LINE_LOCK = 7_240_104


async def _lock_lines(s: AsyncSession, line_ids: list[int]) -> None:
    for line_id in sorted(set(line_ids)):
        await s.execute(
            text("SELECT pg_advisory_xact_lock(:k, :l)"), {"k": _LINE_LOCK, "l": line_id}
        )


async def apply_refund(s: AsyncSession, e: OrderRefunded) -> int:
    """On `order.refunded`: reduce the commission of each refunded line that has one.

    Before release the pending commission shrinks; after release it is clawed back from
    available, and what available cannot cover becomes a receivable. Lines refunded
    before pickup never had a commission and change nothing; an after-sales refund that
    arrives before its pickup event waits for the commission. Once per (refund, line).
    """
    refund_id = e.refund_id
    memo = f"order {e.order_id} refund {refund_id} ({e.reason})"
    applied = 0
    await _lock_lines(s, [line.line_id for line in e.lines])
    for line in e.lines:
        line_id, refunded = line.line_id, line.amount_fen
        if refunded <= 0:
            continue
        # the row lock orders this against a concurrent release of the same commission
        commission_id = (
            await s.execute(
                text("SELECT id FROM settlement.commissions WHERE order_line_id = :l FOR UPDATE"),
                {"l": line_id},
            )
        ).scalar_one_or_none()
        if commission_id is None and e.reason != "after_sales":
            continue
        first = (
            await s.execute(
                text(
                    "INSERT INTO settlement.commission_refunds (refund_id, order_line_id, "
                    "commission_id, amount_fen, clawback_fen, created_at) VALUES "
                    "(:r, :l, :c, :a, 0, :now) ON CONFLICT DO NOTHING RETURNING refund_id"
                ),
                {
                    "r": refund_id,
                    "l": line_id,
                    "c": commission_id,
                    "a": refunded,
                    "now": clock.now(),
                },
            )
        ).scalar_one_or_none()
        if first is None or commission_id is None:
            continue
        applied += await _claw_back(s, commission_id, refund_id, line_id, refunded, memo)
    return applied


async def _claw_back(
    s: AsyncSession, commission_id: int, refund_id: int, line_id: int, refunded: int, memo: str
) -> int:
    c = (
        await s.execute(
            text(
                "UPDATE settlement.commissions SET refunded_fen = LEAST(base_fen, "
                "refunded_fen + :a) WHERE id = :id RETURNING leader_id, base_fen, "
                "refunded_fen, rate, amount_fen, reversed_fen, status"
            ),
            {"a": refunded, "id": commission_id},
        )
    ).one()
    # recomputed from the remaining base, so several partial refunds round like one
    clawback = max(
        0, c.amount_fen - c.reversed_fen - commission_for(c.base_fen - c.refunded_fen, c.rate)
    )
    if clawback == 0:
        return 0
    await s.execute(
        text(
            "UPDATE settlement.commissions SET reversed_fen = reversed_fen + :x, status = "
            "CASE WHEN status = 'pending' AND reversed_fen + :x = amount_fen THEN 'reversed' "
            "ELSE status END WHERE id = :id"
        ),
        {"x": clawback, "id": commission_id},
    )
    await s.execute(
        text(
            "UPDATE settlement.commission_refunds SET clawback_fen = :x "
            "WHERE refund_id = :r AND order_line_id = :l"
        ),
        {"x": clawback, "r": refund_id, "l": line_id},
    )
    leader = c.leader_id
    if c.status == "pending":
        legs = [ledger.Leg(ledger.leader_account(leader, ledger.PENDING), -clawback)]
    else:
        avail_code = ledger.leader_account(leader, ledger.AVAILABLE)
        held = await ledger.lock_balances(
            s, [avail_code, ledger.leader_account(leader, ledger.RECEIVABLE)]
        )
        covered = min(held[avail_code], clawback)
        legs = [
            ledger.Leg(avail_code, -covered),
            ledger.Leg(ledger.leader_account(leader, ledger.RECEIVABLE), covered - clawback),
        ]
    await ledger.post(
        s,
        f"refund:{refund_id}:{line_id}",
        "commission_clawback",
        [*legs, ledger.Leg(ledger.COMMISSION_EXPENSE, clawback)],
        memo=memo,
    )
    return 1


async def commissions_of(
    s: AsyncSession, leader_id: int, after_id: int | None, limit: int
) -> list[Commission]:
    q = (
        select(Commission)
        .where(Commission.leader_id == leader_id)
        .order_by(col(Commission.id).desc())
        .limit(limit + 1)
    )
    if after_id:
        q = q.where(col(Commission.id) < after_id)
    return list((await s.execute(q)).scalars())


async def balance_of(s: AsyncSession, leader_id: int) -> dict:
    b = await ledger.balances(s, leader_id)
    return {
        "leader_id": leader_id,
        "pending_fen": b[ledger.PENDING],
        "available_fen": b[ledger.AVAILABLE],
        "withdrawing_fen": b[ledger.WITHDRAWING],
        "withdrawn_fen": await withdrawn_total(s, leader_id),
        # shown as the positive amount the leader owes
        "receivable_fen": -b[ledger.RECEIVABLE],
    }


async def withdrawn_total(s: AsyncSession, leader_id: int) -> int:
    return (
        await s.execute(
            text(
                "SELECT coalesce(sum(-e.amount_fen), 0) FROM settlement.ledger_entries e "
                "JOIN settlement.ledger_transactions t ON t.id = e.transaction_id "
                "WHERE t.kind = 'payout_paid' AND e.account_id = (SELECT id FROM "
                "settlement.accounts WHERE code = :c)"
            ),
            {"c": ledger.leader_account(leader_id, ledger.WITHDRAWING)},
        )
    ).scalar_one()
