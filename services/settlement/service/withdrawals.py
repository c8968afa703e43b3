"""Withdrawals and payouts: requested against available, decided by staff, paid by a
transfer recorded before and after the provider call, so a retry pays once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from services.common.clock import clock
from services.common.errors import Conflict, InvalidInput, NotFound, PeerTimeout, PeerUnavailable
from services.common.money import format_yuan
from services.common.payments import (
    PaymentProvider,
    ProviderRejected,
    Transfer,
    get_provider,
)
from services.common.settings import get_settings

from .. import ledger
from ..models import Withdrawal
from .commissions import log


class BelowMinimum(InvalidInput):
    code, title = "below_minimum", "Below the minimum withdrawal"


class WithdrawalNotFound(NotFound):
    code, title = "withdrawal_not_found", "No such withdrawal"


class WithdrawalNotRequested(Conflict):
    code, title = "withdrawal_not_requested", "The withdrawal is no longer awaiting a decision"


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
                select(Withdrawal).where(col(Withdrawal.status).in_(["requested", "approved"]))
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
    q = select(Withdrawal).order_by(col(Withdrawal.id).desc()).limit(limit + 1)
    if leader_id is not None:
        q = q.where(Withdrawal.leader_id == leader_id)
    if status:
        q = q.where(Withdrawal.status == status)
    if after_id:
        q = q.where(col(Withdrawal.id) < after_id)
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
