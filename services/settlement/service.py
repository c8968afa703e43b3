"""Settlement rules: commissions (pending on pickup, released after the after-sales
window, clawed back on refunds), withdrawals and their payouts, statements and the
reconciliation with the payment provider."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import select

from services.common.clock import clock, local_datetime
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.money import commission_for, format_yuan
from services.common.payments import (
    PaymentProvider,
    PeerTimeout,
    PeerUnavailable,
    ProviderRejected,
    Transfer,
    get_provider,
)
from services.common.settings import get_settings

from . import ledger
from .models import Commission, Withdrawal

log = structlog.get_logger()


class BelowMinimum(InvalidInput):
    code, title = "below_minimum", "Below the minimum withdrawal"


class WithdrawalNotFound(NotFound):
    code, title = "withdrawal_not_found", "No such withdrawal"


class WithdrawalNotRequested(Conflict):
    code, title = "withdrawal_not_requested", "The withdrawal is no longer awaiting a decision"


async def record_commissions(s: AsyncSession, payload: dict) -> int:
    """On `order.picked_up`: one pending commission per line at the order's frozen rate."""
    leader_id = int(payload["leader_id"])
    rate = Decimal(payload["commission_rate"])
    picked_up_at = datetime.fromisoformat(payload["picked_up_at"])
    available_at = picked_up_at + timedelta(days=get_settings().commission_release_days)
    created = 0
    await _lock_lines(s, [int(line["line_id"]) for line in payload["lines"]])
    for line in payload["lines"]:
        base = int(line["base_fen"])
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
                    "line": int(line["line_id"]),
                    "order": int(payload["order_id"]),
                    "leader": leader_id,
                    "tier": payload["leader_tier"],
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
                f"commission:{line['line_id']}",
                "commission_earned",
                [
                    ledger.Leg(ledger.leader_account(leader_id, ledger.PENDING), amount),
                    ledger.Leg(ledger.COMMISSION_EXPENSE, -amount),
                ],
                memo=f"order {payload['order_id']} line {line['line_id']}",
            )
        # after-sales refunds of this line that were consumed before this pickup
        waiting = (
            await s.execute(
                text(
                    "UPDATE settlement.commission_refunds SET commission_id = :c "
                    "WHERE order_line_id = :l AND commission_id IS NULL "
                    "RETURNING refund_id, amount_fen"
                ),
                {"c": row, "l": int(line["line_id"])},
            )
        ).all()
        for w in sorted(waiting):
            await _claw_back(
                s, row, w.refund_id, int(line["line_id"]), w.amount_fen, f"refund {w.refund_id}"
            )
    return created


# --- release and claw-back ----------------------------------------------------------------


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


async def apply_refund(s: AsyncSession, payload: dict) -> int:
    """On `order.refunded`: reduce the commission of each refunded line that has one.

    Before release the pending commission shrinks; after release it is clawed back from
    available, and what available cannot cover becomes a receivable. Lines refunded
    before pickup never had a commission and change nothing; an after-sales refund that
    arrives before its pickup event waits for the commission. Once per (refund, line).
    """
    refund_id = int(payload["refund_id"])
    memo = f"order {payload.get('order_id')} refund {refund_id} ({payload.get('reason')})"
    applied = 0
    lines = payload.get("lines") or []
    await _lock_lines(s, [int(line["line_id"]) for line in lines])
    for line in lines:
        line_id, refunded = int(line["line_id"]), int(line["amount_fen"])
        if refunded <= 0:
            continue
        # the row lock orders this against a concurrent release of the same commission
        commission_id = (
            await s.execute(
                text("SELECT id FROM settlement.commissions WHERE order_line_id = :l FOR UPDATE"),
                {"l": line_id},
            )
        ).scalar_one_or_none()
        if commission_id is None and payload.get("reason") != "after_sales":
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
        .order_by(Commission.id.desc())
        .limit(limit + 1)
    )
    if after_id:
        q = q.where(Commission.id < after_id)
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


# --- withdrawals and payouts -------------------------------------------------------------


def add_working_days(start: datetime, days: int, tz: str) -> datetime:
    """`start` plus `days` working days (Monday to Friday in the platform's zone)."""
    local = start.astimezone(ZoneInfo(tz))
    while days > 0:
        local += timedelta(days=1)
        if local.weekday() < 5:
            days -= 1
    return local.astimezone(UTC)


def is_overdue(w: Withdrawal, now: datetime) -> bool:
    st = get_settings()
    if w.status not in ("requested", "approved"):
        return False
    return now > add_working_days(w.created_at, st.payout_sla_working_days, st.timezone)


async def count_overdue_withdrawals(db) -> int:
    """Withdrawals still waiting past the payout SLA (measured when metrics are scraped)."""
    now = clock.now()
    async with db.session() as s:
        waiting = (
            await s.execute(
                select(Withdrawal).where(Withdrawal.status.in_(["requested", "approved"]))
            )
        ).scalars()
        return sum(1 for w in waiting if is_overdue(w, now))


async def request_withdrawal(db, leader_id: int, amount_fen: int) -> Withdrawal:
    """The amount leaves available in the same transaction that records the request: the
    balance CHECK decides races, so concurrent requests can never overdraw."""
    minimum = get_settings().min_withdrawal_fen
    if amount_fen < minimum:
        raise BelowMinimum(f"the minimum withdrawal is {format_yuan(minimum)} CNY")
    async with db.transaction() as s:
        w = Withdrawal(leader_id=leader_id, amount_fen=amount_fen, created_at=clock.now())
        s.add(w)
        await s.flush()
        try:
            await ledger.post(
                s,
                f"withdrawal:{w.id}",
                "withdrawal_requested",
                [
                    ledger.Leg(ledger.leader_account(leader_id, ledger.AVAILABLE), -amount_fen),
                    ledger.Leg(ledger.leader_account(leader_id, ledger.WITHDRAWING), amount_fen),
                ],
            )
        except ledger.InsufficientBalance as e:
            raise ledger.InsufficientBalance(
                f"the available balance does not cover {format_yuan(amount_fen)} CNY"
            ) from e
    return w


async def list_withdrawals(
    s: AsyncSession, leader_id: int | None, status: str | None, after_id: int | None, limit: int
) -> list[Withdrawal]:
    q = select(Withdrawal).order_by(Withdrawal.id.desc()).limit(limit + 1)
    if leader_id is not None:
        q = q.where(Withdrawal.leader_id == leader_id)
    if status:
        q = q.where(Withdrawal.status == status)
    if after_id:
        q = q.where(Withdrawal.id < after_id)
    return list((await s.execute(q)).scalars())


async def get_withdrawal(s: AsyncSession, withdrawal_id: int) -> Withdrawal:
    w = await s.get(Withdrawal, withdrawal_id, populate_existing=True)
    if w is None:
        raise WithdrawalNotFound(f"withdrawal {withdrawal_id} does not exist")
    return w


async def _decide(s: AsyncSession, withdrawal_id: int, status: str, staff_id: int, reason=None):
    row = (
        await s.execute(
            text(
                "UPDATE settlement.withdrawals SET status = :st, decided_at = :now, "
                "decided_by = :by, reason = :why WHERE id = :id AND status = 'requested' "
                "RETURNING id, leader_id, amount_fen"
            ),
            {"st": status, "now": clock.now(), "by": staff_id, "why": reason, "id": withdrawal_id},
        )
    ).first()
    if row is None:
        w = await get_withdrawal(s, withdrawal_id)
        raise WithdrawalNotRequested(f"withdrawal {withdrawal_id} is already {w.status}")
    return row


async def reject_withdrawal(db, withdrawal_id: int, staff_id: int, reason: str) -> Withdrawal:
    async with db.transaction() as s:
        w = await _decide(s, withdrawal_id, "rejected", staff_id, reason)
        await _return_to_available(s, w, f"withdrawal_rejected:{w.id}", "withdrawal_rejected")
    async with db.session() as s:
        return await get_withdrawal(s, withdrawal_id)


async def _return_to_available(s: AsyncSession, w, reference: str, kind: str) -> None:
    await ledger.post(
        s,
        reference,
        kind,
        [
            ledger.Leg(ledger.leader_account(w.leader_id, ledger.WITHDRAWING), -w.amount_fen),
            ledger.Leg(ledger.leader_account(w.leader_id, ledger.AVAILABLE), w.amount_fen),
        ],
    )


async def approve_withdrawal(
    db, withdrawal_id: int, staff_id: int, provider: PaymentProvider | None = None
) -> Withdrawal:
    """Only one approval wins the conditional UPDATE, so only one pays out."""
    async with db.transaction() as s:
        await _decide(s, withdrawal_id, "approved", staff_id)
    return await pay_out(db, withdrawal_id, provider)


async def connected_account(db, leader_id: int, provider: PaymentProvider) -> str:
    async with db.session() as s:
        acct = (
            await s.execute(
                text(
                    "SELECT provider_account_id FROM settlement.payout_accounts WHERE leader_id = :l"
                ),
                {"l": leader_id},
            )
        ).scalar_one_or_none()
    if acct:
        return acct
    # the key makes a retry (or a racing first payout) get the same account back
    created = await provider.create_account(
        idempotency_key=f"leader-account-{leader_id}", metadata={"leader_id": leader_id}
    )
    async with db.transaction() as s:
        await s.execute(
            text(
                "INSERT INTO settlement.payout_accounts (leader_id, provider_account_id, created_at) "
                "VALUES (:l, :a, :now) ON CONFLICT (leader_id) DO NOTHING"
            ),
            {"l": leader_id, "a": created, "now": clock.now()},
        )
        return (
            await s.execute(
                text(
                    "SELECT provider_account_id FROM settlement.payout_accounts WHERE leader_id = :l"
                ),
                {"l": leader_id},
            )
        ).scalar_one()


def payout_key(withdrawal_id: int) -> str:
    return f"withdrawal-{withdrawal_id}"


async def begin_payout(db, withdrawal_id: int):
    """Claim the payout and record that the provider is about to be called. None when the
    withdrawal is not approved or another attempt is in flight (its lease is fresh)."""
    now = clock.now()
    stale = now - timedelta(seconds=get_settings().payout_retry_after_s)
    async with db.transaction() as s:
        return (
            await s.execute(
                text(
                    "UPDATE settlement.withdrawals SET payout_started_at = :now, "
                    "payout_attempts = payout_attempts + 1 WHERE id = :id AND status = 'approved' "
                    "AND (payout_started_at IS NULL OR payout_started_at < :stale) "
                    "RETURNING id, leader_id, amount_fen, payout_attempts"
                ),
                {"now": now, "stale": stale, "id": withdrawal_id},
            )
        ).first()


async def send_transfer(db, w, provider: PaymentProvider) -> Transfer:
    destination = await connected_account(db, w.leader_id, provider)
    return await provider.transfer(
        w.amount_fen,
        destination,
        idempotency_key=payout_key(w.id),
        metadata={"withdrawal_id": w.id, "leader_id": w.leader_id},
    )


async def find_transfer(provider: PaymentProvider, withdrawal_id: int) -> Transfer | None:
    """A transfer an earlier attempt made but never recorded (it crashed in between)."""
    for t in await provider.list_transfers():
        if t.metadata.get("withdrawal_id") == str(withdrawal_id):
            return t
    return None


async def record_paid(db, w, transfer: Transfer) -> bool:
    async with db.transaction() as s:
        done = (
            await s.execute(
                text(
                    "UPDATE settlement.withdrawals SET status = 'paid', provider_transfer_id = :t, "
                    "settled_at = :now WHERE id = :id AND status = 'approved' RETURNING id"
                ),
                {"t": transfer.id, "now": clock.now(), "id": w.id},
            )
        ).first()
        if done is None:
            return False
        await ledger.post(
            s,
            f"payout:{w.id}",
            "payout_paid",
            [
                ledger.Leg(ledger.leader_account(w.leader_id, ledger.WITHDRAWING), -w.amount_fen),
                ledger.Leg(ledger.PAYOUTS, w.amount_fen),
            ],
            memo=f"transfer {transfer.id}",
        )
    return True


async def record_failed(db, w, code: str) -> bool:
    async with db.transaction() as s:
        done = (
            await s.execute(
                text(
                    "UPDATE settlement.withdrawals SET status = 'failed', failure_code = :c, "
                    "settled_at = :now WHERE id = :id AND status = 'approved' RETURNING id"
                ),
                {"c": code[:100], "now": clock.now(), "id": w.id},
            )
        ).first()
        if done is None:
            return False
        await _return_to_available(s, w, f"payout_failed:{w.id}", "payout_failed")
    return True


async def pay_out(db, withdrawal_id: int, provider: PaymentProvider | None = None) -> Withdrawal:
    """Pay an approved withdrawal once. The idempotency key makes the provider replay a
    repeated call, and on a retry we first look for the transfer an earlier attempt may
    have made, so paying never depends on the provider honouring the key alone."""
    provider = provider or get_provider()
    w = await begin_payout(db, withdrawal_id)
    if w is not None:
        try:
            earlier = await find_transfer(provider, w.id) if w.payout_attempts > 1 else None
            transfer = earlier or await send_transfer(db, w, provider)
        except ProviderRejected as e:
            await record_failed(db, w, e.code if e.code != "payment_provider_error" else e.detail)
        except (PeerUnavailable, PeerTimeout):
            # unknown outcome: left approved for the retry job, which looks before paying
            log.warning("payout_deferred", withdrawal_id=w.id, exc_info=True)
        else:
            await record_paid(db, w, transfer)
    async with db.session() as s:
        return await get_withdrawal(s, withdrawal_id)


async def retry_payouts(db, provider: PaymentProvider | None = None) -> int:
    stale = clock.now() - timedelta(seconds=get_settings().payout_retry_after_s)
    async with db.session() as s:
        ids = (
            await s.execute(
                text(
                    "SELECT id FROM settlement.withdrawals WHERE status = 'approved' AND "
                    "(payout_started_at IS NULL OR payout_started_at < :stale) ORDER BY id"
                ),
                {"stale": stale},
            )
        ).scalars()
        ids = list(ids)
    for wid in ids:
        await pay_out(db, wid, provider)
    return len(ids)


# --- statements --------------------------------------------------------------------------


def month_bounds(month: str, tz: str) -> tuple[datetime, datetime]:
    try:
        first = datetime.strptime(month, "%Y-%m").date()
    except ValueError as e:
        raise InvalidInput("month must be YYYY-MM", code="invalid_month") from e
    nxt = date(first.year + (first.month == 12), first.month % 12 + 1, 1)
    return local_datetime(first, time(0), tz), local_datetime(nxt, time(0), tz)


async def statement(s: AsyncSession, leader_id: int, month: str) -> dict:
    tz = get_settings().timezone
    start, end = month_bounds(month, tz)
    days = (
        await s.execute(
            text(
                "SELECT (picked_up_at AT TIME ZONE :tz)::date AS day, leader_tier AS tier, "
                "count(*) AS lines, sum(base_fen - refunded_fen) AS base_fen, "
                "sum(amount_fen - reversed_fen) AS commission_fen, "
                "sum(CASE WHEN status = 'pending' THEN amount_fen - reversed_fen ELSE 0 END) "
                "AS pending_fen, "
                "sum(CASE WHEN status = 'available' THEN amount_fen - reversed_fen ELSE 0 END) "
                "AS available_fen FROM settlement.commissions WHERE leader_id = :l AND "
                "picked_up_at >= :start AND picked_up_at < :end GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            {"tz": tz, "l": leader_id, "start": start, "end": end},
        )
    ).all()
    withdrawals = (
        await s.execute(
            text(
                "SELECT id, (created_at AT TIME ZONE :tz)::date AS day, amount_fen, status "
                "FROM settlement.withdrawals WHERE leader_id = :l AND created_at >= :start "
                "AND created_at < :end ORDER BY id"
            ),
            {"tz": tz, "l": leader_id, "start": start, "end": end},
        )
    ).all()
    day_rows = [
        {
            "date": r.day.isoformat(),
            "tier": r.tier,
            "lines": r.lines,
            "base_fen": int(r.base_fen),
            "commission_fen": int(r.commission_fen),
            "pending_fen": int(r.pending_fen),
            "available_fen": int(r.available_fen),
        }
        for r in days
    ]
    w_rows = [
        {"id": r.id, "date": r.day.isoformat(), "amount_fen": r.amount_fen, "status": r.status}
        for r in withdrawals
    ]
    return {
        "leader_id": leader_id,
        "month": month,
        "currency": get_settings().currency,
        "days": day_rows,
        "withdrawals": w_rows,
        "totals": {
            "commission_fen": sum(d["commission_fen"] for d in day_rows),
            "pending_fen": sum(d["pending_fen"] for d in day_rows),
            "available_fen": sum(d["available_fen"] for d in day_rows),
            "withdrawn_fen": sum(w["amount_fen"] for w in w_rows if w["status"] == "paid"),
        },
    }


STATEMENT_COLUMNS = [
    "date",
    "kind",
    "tier",
    "lines",
    "base_yuan",
    "commission_yuan",
    "pending_yuan",
    "available_yuan",
    "withdrawal_id",
    "withdrawal_yuan",
    "withdrawal_status",
]


def statement_csv(st: dict) -> bytes:
    """UTF-8 with a BOM so spreadsheet programs read it as UTF-8; yuan from integer fen."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(STATEMENT_COLUMNS)
    for d in st["days"]:
        w.writerow(
            [
                d["date"],
                "commission",
                d["tier"],
                d["lines"],
                format_yuan(d["base_fen"]),
                format_yuan(d["commission_fen"]),
                format_yuan(d["pending_fen"]),
                format_yuan(d["available_fen"]),
                "",
                "",
                "",
            ]
        )
    for x in st["withdrawals"]:
        w.writerow(
            [
                x["date"],
                "withdrawal",
                "",
                "",
                "",
                "",
                "",
                "",
                x["id"],
                format_yuan(x["amount_fen"]),
                x["status"],
            ]
        )
    return "\ufeff".encode() + buf.getvalue().encode("utf-8")


# --- reconciliation ----------------------------------------------------------------------

OUT_OF_SCOPE = {
    "charges": "owned by the orders service (payment intents); not in the settlement ledger",
    "refunds": "owned by the orders service; settlement only sees their commission claw-backs",
}


async def reconcile(
    db, start: datetime, end: datetime, provider: PaymentProvider | None = None
) -> dict:
    """Payouts in the ledger vs transfers at the provider, for [start, end)."""
    provider = provider or get_provider()
    transfers = await provider.list_transfers()
    async with db.session() as s:
        ours = (
            await s.execute(
                text(
                    "SELECT id, leader_id, amount_fen, status, provider_transfer_id, settled_at "
                    "FROM settlement.withdrawals WHERE status = 'paid' AND settled_at >= :a "
                    "AND settled_at < :b"
                ),
                {"a": start, "b": end},
            )
        ).all()
        all_known = {
            r.id: r
            for r in (
                await s.execute(
                    text(
                        "SELECT id, amount_fen, status, provider_transfer_id "
                        "FROM settlement.withdrawals WHERE status <> 'requested'"
                    )
                )
            ).all()
        }
        ledger_total = (
            await s.execute(
                text(
                    "SELECT coalesce(sum(e.amount_fen), 0) FROM settlement.ledger_entries e "
                    "JOIN settlement.ledger_transactions t ON t.id = e.transaction_id "
                    "WHERE t.kind = 'payout_paid' AND e.created_at >= :a AND e.created_at < :b "
                    "AND e.account_id = (SELECT id FROM settlement.accounts WHERE code = :c)"
                ),
                {"a": start, "b": end, "c": ledger.PAYOUTS},
            )
        ).scalar_one()
    by_id = {t.id: t for t in transfers}
    recorded = {r.provider_transfer_id for r in all_known.values() if r.provider_transfer_id}
    lo, hi = start.timestamp(), end.timestamp()
    differences: list[dict] = []
    provider_total = 0
    for r in ours:
        t = by_id.get(r.provider_transfer_id)
        if t is None:
            differences.append(
                {
                    "kind": "missing_at_provider",
                    "withdrawal_id": r.id,
                    "transfer_id": r.provider_transfer_id,
                    "ledger_fen": r.amount_fen,
                    "provider_fen": 0,
                }
            )
            continue
        provider_total += t.amount_fen
        if t.amount_fen != r.amount_fen:
            differences.append(
                {
                    "kind": "amount_mismatch",
                    "withdrawal_id": r.id,
                    "transfer_id": t.id,
                    "ledger_fen": r.amount_fen,
                    "provider_fen": t.amount_fen,
                }
            )
    for t in transfers:
        if t.id in recorded or not lo <= t.created < hi:
            continue
        provider_total += t.amount_fen
        wid = t.metadata.get("withdrawal_id")
        known = all_known.get(int(wid)) if wid and wid.isdigit() else None
        differences.append(
            {
                "kind": "not_in_ledger",
                "withdrawal_id": known.id if known else None,
                "withdrawal_status": known.status if known else None,
                "transfer_id": t.id,
                "ledger_fen": 0,
                "provider_fen": t.amount_fen,
            }
        )
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "currency": get_settings().currency,
        "transfers": {"ledger_fen": int(ledger_total), "provider_fen": provider_total},
        "differences": differences,
        "out_of_scope": OUT_OF_SCOPE,
    }


def period(from_day: date | None, to_day: date | None) -> tuple[datetime, datetime]:
    """Local days, both included; by default yesterday and today."""
    tz = get_settings().timezone
    today = clock.now().astimezone(ZoneInfo(tz)).date()
    to_day = to_day or today
    from_day = from_day or (to_day - timedelta(days=1))
    if from_day > to_day:
        raise InvalidInput("from must not be after to", code="invalid_period")
    return local_datetime(from_day, time(0), tz), local_datetime(
        to_day + timedelta(days=1), time(0), tz
    )
