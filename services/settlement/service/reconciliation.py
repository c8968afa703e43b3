"""Reconciliation of our payouts with the provider's transfers."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import text

from services.common.clock import clock, local_datetime
from services.common.errors import InvalidInput
from services.common.payments import (
    PaymentProvider,
    get_provider,
)
from services.common.settings import get_settings

from .. import ledger

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
