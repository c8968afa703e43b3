"""The double-entry ledger: every movement is a transaction whose entries sum to zero.

A leader's balances are the sums of their accounts' entries; `accounts.balance_fen` is
kept in the same transaction as the entries (a cache the invariant check verifies) and a
CHECK refuses any leader account going below zero, so a race can fail but never overdraw.
Accounts are locked in one order (by code) so concurrent postings never deadlock.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.clock import clock
from services.common.errors import Conflict

# leader accounts (what the platform owes a leader), by state of the money
PENDING, AVAILABLE, WITHDRAWING, RECEIVABLE = "pending", "available", "withdrawing", "receivable"
# platform accounts: may go negative (they are the other side of every leader entry)
COMMISSION_EXPENSE = "platform:commission_expense"
PAYOUTS_IN_TRANSIT = "platform:payouts_in_transit"


class InsufficientBalance(Conflict):
    status, code = 422, "insufficient_balance"


def leader_account(leader_id: int, kind: str) -> str:
    return f"leader:{leader_id}:{kind}"


@dataclass(frozen=True)
class Leg:
    account: str
    amount_fen: int


async def _ensure_account(s: AsyncSession, code: str) -> int:
    if code.startswith("leader:"):
        _, leader_id, kind = code.split(":")
        params = {"c": code, "l": int(leader_id), "k": kind, "neg": False}
    else:
        params = {"c": code, "l": None, "k": code.split(":", 1)[1], "neg": True}
    await s.execute(
        text(
            "INSERT INTO settlement.accounts (code, leader_id, kind, currency, allow_negative, "
            "balance_fen) VALUES (:c, :l, :k, 'CNY', :neg, 0) ON CONFLICT (code) DO NOTHING"
        ),
        params,
    )
    return (
        await s.execute(text("SELECT id FROM settlement.accounts WHERE code = :c"), {"c": code})
    ).scalar_one()


async def post(s: AsyncSession, reference: str, kind: str, legs: list[Leg], memo: str = "") -> bool:
    """Post one balanced transaction, once per reference. False if already posted."""
    if sum(leg.amount_fen for leg in legs) != 0:
        raise ValueError(f"unbalanced transaction {reference}: {legs}")
    legs = [leg for leg in legs if leg.amount_fen != 0]
    tx_id = (
        await s.execute(
            text(
                "INSERT INTO settlement.ledger_transactions (reference, kind, memo, created_at) "
                "VALUES (:r, :k, :m, :now) ON CONFLICT (reference) DO NOTHING RETURNING id"
            ),
            {"r": reference, "k": kind, "m": memo, "now": clock.now()},
        )
    ).scalar_one_or_none()
    if tx_id is None:
        return False
    now = clock.now()
    for leg in sorted(legs, key=lambda g: g.account):
        account_id = await _ensure_account(s, leg.account)
        try:
            async with s.begin_nested():
                await s.execute(
                    text(
                        "UPDATE settlement.accounts SET balance_fen = balance_fen + :a WHERE id = :id"
                    ),
                    {"a": leg.amount_fen, "id": account_id},
                )
        except IntegrityError as e:
            raise InsufficientBalance(f"{leg.account} cannot cover {-leg.amount_fen} fen") from e
        await s.execute(
            text(
                "INSERT INTO settlement.ledger_entries (transaction_id, account_id, amount_fen, "
                "currency, created_at) VALUES (:t, :a, :amt, 'CNY', :now)"
            ),
            {"t": tx_id, "a": account_id, "amt": leg.amount_fen, "now": now},
        )
    return True


async def balances(s: AsyncSession, leader_id: int) -> dict[str, int]:
    rows = (
        await s.execute(
            text("SELECT kind, balance_fen FROM settlement.accounts WHERE leader_id = :l"),
            {"l": leader_id},
        )
    ).all()
    out = {PENDING: 0, AVAILABLE: 0, WITHDRAWING: 0, RECEIVABLE: 0}
    out.update({r.kind: r.balance_fen for r in rows})
    return out
