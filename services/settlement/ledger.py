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
from services.common.settings import get_settings

# leader accounts (what the platform owes a leader), by state of the money. Amounts are
# signed so that every transaction sums to zero: what the platform owes a leader is
# positive, so a receivable (what the leader owes after a claw-back) is never above zero.
PENDING, AVAILABLE, WITHDRAWING, RECEIVABLE = "pending", "available", "withdrawing", "receivable"
LEADER_KINDS = (PENDING, AVAILABLE, WITHDRAWING, RECEIVABLE)
# platform accounts: may go negative (they are the other side of every leader entry)
COMMISSION_EXPENSE = "platform:commission_expense"
PAYOUTS = "platform:payouts"


class InsufficientBalance(Conflict):
    status, code = 422, "insufficient_balance"


def leader_account(leader_id: int, kind: str) -> str:
    return f"leader:{leader_id}:{kind}"


@dataclass(frozen=True)
class Leg:
    account: str
    amount_fen: int


def _account_row(code: str) -> tuple[str, int | None, str, bool]:
    if code.startswith("leader:"):
        _, leader_id, kind = code.split(":")
        return code, int(leader_id), kind, kind == RECEIVABLE
    return code, None, code.split(":", 1)[1], True


async def _ensure_accounts(s: AsyncSession, codes: list[str]) -> None:
    """Create the accounts that do not exist yet, in one statement."""
    rows = [_account_row(c) for c in sorted(set(codes))]
    await s.execute(
        text(
            "INSERT INTO settlement.accounts (code, leader_id, kind, currency, allow_negative, "
            "balance_fen) SELECT v.c, v.l, v.k, :cur, v.neg, 0 FROM unnest(CAST(:c AS text[]), "
            "CAST(:l AS int[]), CAST(:k AS text[]), CAST(:neg AS boolean[])) AS v(c, l, k, neg) "
            "ORDER BY v.c ON CONFLICT (code) DO NOTHING"
        ),
        {
            "c": [r[0] for r in rows],
            "l": [r[1] for r in rows],
            "k": [r[2] for r in rows],
            "neg": [r[3] for r in rows],
            "cur": get_settings().currency,
        },
    )


async def lock_balances(s: AsyncSession, codes: list[str]) -> dict[str, int]:
    """Lock accounts (in code order, like `post`) and return their balances, for rules that
    decide an amount from a balance: nobody else can move it until this transaction ends."""
    codes = sorted(set(codes))
    await _ensure_accounts(s, codes)
    rows = (
        await s.execute(
            text(
                "SELECT code, balance_fen FROM settlement.accounts WHERE code = ANY(:c) "
                "ORDER BY code FOR UPDATE"
            ),
            {"c": codes},
        )
    ).all()
    return {r.code: r.balance_fen for r in rows}


async def post(s: AsyncSession, reference: str, kind: str, legs: list[Leg], memo: str = "") -> bool:
    """Post one balanced transaction, once per reference. False if already posted."""
    return await post_many(s, [Posting(reference, kind, legs, memo)]) == 1


@dataclass(frozen=True)
class Posting:
    reference: str
    kind: str
    legs: list[Leg]
    memo: str = ""


async def post_many(s: AsyncSession, postings: list[Posting]) -> int:
    """`post` for many transactions in a handful of statements (a job moving thousands of
    balances): each once per reference, accounts locked in code order, and a balance that
    would go below zero fails them all. Returns how many were posted."""
    for p in postings:
        if sum(leg.amount_fen for leg in p.legs) != 0:
            raise ValueError(f"unbalanced transaction {p.reference}: {p.legs}")
    if not postings:
        return 0
    now = clock.now()
    # a zero leg moves nothing: it neither opens nor locks an account
    codes = sorted({leg.account for p in postings for leg in p.legs if leg.amount_fen != 0})
    ids: dict[str, int] = {}
    if codes:
        await _ensure_accounts(s, codes)
        ids = {
            r.code: r.id
            for r in await s.execute(
                text(
                    "SELECT id, code FROM settlement.accounts WHERE code = ANY(:c) "
                    "ORDER BY code FOR UPDATE"
                ),
                {"c": codes},
            )
        }
    posted = {
        r.reference: r.id
        for r in await s.execute(
            text(
                "INSERT INTO settlement.ledger_transactions (reference, kind, memo, created_at) "
                "SELECT v.r, v.k, v.m, :now FROM unnest(CAST(:r AS text[]), CAST(:k AS text[]), "
                "CAST(:m AS text[])) AS v(r, k, m) ON CONFLICT (reference) DO NOTHING "
                "RETURNING id, reference"
            ),
            {
                "r": [p.reference for p in postings],
                "k": [p.kind for p in postings],
                "m": [p.memo for p in postings],
                "now": now,
            },
        )
    }
    entries = [
        (posted[p.reference], ids[leg.account], leg.amount_fen)
        for p in postings
        if p.reference in posted
        for leg in p.legs
        if leg.amount_fen != 0
    ]
    if not entries:
        return len(posted)
    moves: dict[int, int] = {}
    for _, account_id, amount in entries:
        moves[account_id] = moves.get(account_id, 0) + amount
    try:
        async with s.begin_nested():
            await s.execute(
                text(
                    "UPDATE settlement.accounts a SET balance_fen = a.balance_fen + v.d FROM "
                    "unnest(CAST(:a AS int[]), CAST(:d AS bigint[])) AS v(a, d) WHERE a.id = v.a"
                ),
                {"a": list(moves), "d": list(moves.values())},
            )
    except IntegrityError as e:
        raise InsufficientBalance("a balance cannot cover this posting") from e
    await s.execute(
        text(
            "INSERT INTO settlement.ledger_entries (transaction_id, account_id, amount_fen, "
            "currency, created_at) SELECT v.t, v.a, v.amt, :cur, :now FROM unnest("
            "CAST(:t AS int[]), CAST(:a AS int[]), CAST(:amt AS bigint[])) AS v(t, a, amt)"
        ),
        {
            "t": [e[0] for e in entries],
            "a": [e[1] for e in entries],
            "amt": [e[2] for e in entries],
            "cur": get_settings().currency,
            "now": now,
        },
    )
    return len(posted)


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


async def check_invariants(s: AsyncSession) -> list[str]:
    """Every rule the ledger must keep, checked over the whole ledger; [] when all hold."""
    problems: list[str] = []
    for r in await s.execute(
        text(
            "SELECT t.reference, e.currency, sum(e.amount_fen) AS total "
            "FROM settlement.ledger_entries e JOIN settlement.ledger_transactions t "
            "ON t.id = e.transaction_id GROUP BY t.reference, e.currency HAVING sum(e.amount_fen) <> 0"
        )
    ):
        problems.append(f"transaction {r.reference} sums to {r.total} {r.currency}, not 0")
    for r in await s.execute(
        text(
            "SELECT a.code, a.balance_fen, coalesce(sum(e.amount_fen), 0) AS entries "
            "FROM settlement.accounts a LEFT JOIN settlement.ledger_entries e ON e.account_id = a.id "
            "GROUP BY a.id HAVING a.balance_fen <> coalesce(sum(e.amount_fen), 0)"
        )
    ):
        problems.append(
            f"account {r.code} holds {r.balance_fen} but its entries sum to {r.entries}"
        )
    for r in await s.execute(
        text(
            "SELECT code, balance_fen FROM settlement.accounts WHERE leader_id IS NOT NULL AND "
            "((kind <> :rec AND balance_fen < 0) OR (kind = :rec AND balance_fen > 0))"
        ),
        {"rec": RECEIVABLE},
    ):
        problems.append(f"leader account {r.code} has the wrong sign: {r.balance_fen}")
    for r in await s.execute(
        text(
            "SELECT currency, sum(amount_fen) AS total FROM settlement.ledger_entries "
            "GROUP BY currency HAVING sum(amount_fen) <> 0"
        )
    ):
        problems.append(f"all {r.currency} entries sum to {r.total}, not 0")
    # a commission's ledger trail must equal what the commission row says it is worth
    # (references: commission:<line> when earned, refund:<refund>:<line> when clawed back)
    for r in await s.execute(
        text(
            "WITH booked AS (SELECT split_part(t.reference, ':', "
            "CASE WHEN t.kind = 'commission_earned' THEN 2 ELSE 3 END)::bigint AS line_id, "
            "sum(e.amount_fen) AS amount FROM settlement.ledger_entries e "
            "JOIN settlement.ledger_transactions t ON t.id = e.transaction_id "
            "WHERE t.kind IN ('commission_earned', 'commission_clawback') AND e.account_id = "
            "(SELECT id FROM settlement.accounts WHERE code = :exp) GROUP BY 1) "
            "SELECT c.id, c.amount_fen - c.reversed_fen AS owed, coalesce(b.amount, 0) AS booked "
            "FROM settlement.commissions c LEFT JOIN booked b ON b.line_id = c.order_line_id "
            "WHERE c.amount_fen - c.reversed_fen <> -coalesce(b.amount, 0)"
        ),
        {"exp": COMMISSION_EXPENSE},
    ):
        problems.append(f"commission {r.id} is worth {r.owed} but the ledger expensed {-r.booked}")
    return problems
