"""The leader's deposit (保证金): paid once through the provider, deducted by staff with a
reason, refunded through the provider when the leader leaves in good standing.

The balance lives on the leader row and moves only by conditional UPDATEs, each with a
`deposit_entries` row in the same transaction.
"""

from __future__ import annotations

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from services.common.clock import clock
from services.common.errors import Conflict
from services.common.payments import get_provider
from services.common.settings import get_settings

from .models import DepositEntry, Leader
from .service import get_leader

log = structlog.get_logger()


class DepositInsufficient(Conflict):
    code = "deposit_insufficient"


class DepositNotPaid(Conflict):
    code = "deposit_not_paid"


class DepositNotRefundable(Conflict):
    code = "deposit_not_refundable"


async def start_payment(db, leader_id: int, payment_method: str | None) -> Leader:
    """Create (or reuse) the deposit's one intent; with a method, confirm it too."""
    provider = get_provider()
    async with db.session() as s:
        leader = await get_leader(s, leader_id)
    if leader.deposit_status != "unpaid":
        return leader  # paid (or being refunded): never a second charge
    if leader.status == "terminated":
        raise Conflict("a terminated leader pays no deposit", code="leader_not_active")
    intent_id = leader.deposit_intent_id
    if intent_id is None:
        created = await provider.open_intent(
            f"deposit:{leader_id}",
            get_settings().deposit_fen,
            {"kind": "deposit", "leader_id": leader_id},
        )
        async with db.transaction() as s:
            # a concurrent call may have stored its intent first: everyone uses that one
            await s.execute(
                text(
                    "UPDATE leaders.leaders SET deposit_intent_id = :pi WHERE id = :id AND "
                    "deposit_intent_id IS NULL"
                ),
                {"pi": created, "id": leader_id},
            )
            intent_id = (
                await s.execute(
                    text("SELECT deposit_intent_id FROM leaders.leaders WHERE id = :id"),
                    {"id": leader_id},
                )
            ).scalar_one()
    if payment_method is not None:
        async with db.transaction() as s:
            attempt = (
                await s.execute(
                    text(
                        "UPDATE leaders.leaders SET deposit_pay_attempts = deposit_pay_attempts + 1"
                        " WHERE id = :id AND deposit_status = 'unpaid' RETURNING deposit_pay_attempts"
                    ),
                    {"id": leader_id},
                )
            ).scalar_one_or_none()
        if attempt is not None:
            intent = await provider.pay_once(
                f"deposit:{leader_id}", intent_id, attempt, payment_method
            )
            if intent.succeeded:
                async with db.transaction() as s:
                    await record_payment(s, leader_id, intent.id, intent.amount_fen)
    async with db.session() as s:
        return await get_leader(s, leader_id)


async def record_payment(s: AsyncSession, leader_id: int, intent_id: str, amount_fen: int) -> bool:
    """The one place a deposit becomes paid: from the confirm call or the webhook event."""
    row = (
        await s.execute(
            text(
                "UPDATE leaders.leaders SET deposit_status = 'paid', "
                "deposit_balance_fen = deposit_balance_fen + :amt WHERE id = :id AND "
                "deposit_intent_id = :pi AND deposit_status = 'unpaid' RETURNING deposit_balance_fen"
            ),
            {"amt": amount_fen, "id": leader_id, "pi": intent_id},
        )
    ).first()
    if row is None:
        return False
    await _entry(s, leader_id, "payment", amount_fen, row[0], "deposit paid", intent_id, None)
    return True


async def _entry(
    s: AsyncSession,
    leader_id: int,
    kind: str,
    amount_fen: int,
    balance_after: int,
    reason: str,
    reference: str | None,
    by: int | None,
) -> None:
    await s.execute(
        text(
            "INSERT INTO leaders.deposit_entries (leader_id, kind, amount_fen, balance_after_fen, "
            "reason, reference, created_by, created_at) VALUES (:l, :k, :a, :b, :r, :ref, :by, :now)"
        ),
        {
            "l": leader_id,
            "k": kind,
            "a": amount_fen,
            "b": balance_after,
            "r": reason,
            "ref": reference,
            "by": by,
            "now": clock.now(),
        },
    )


async def deduct(s: AsyncSession, leader_id: int, amount_fen: int, reason: str, by: int) -> int:
    leader = await get_leader(s, leader_id)
    row = (
        await s.execute(
            text(
                "UPDATE leaders.leaders SET deposit_balance_fen = deposit_balance_fen - :a "
                "WHERE id = :id AND deposit_status = 'paid' AND deposit_balance_fen >= :a "
                "RETURNING deposit_balance_fen"
            ),
            {"a": amount_fen, "id": leader_id},
        )
    ).first()
    if row is None:
        if leader.deposit_status != "paid":
            raise DepositNotPaid("this leader has no deposit to deduct from")
        raise DepositInsufficient(
            f"the deposit holds {leader.deposit_balance_fen} fen, less than {amount_fen}"
        )
    await _entry(s, leader_id, "deduction", -amount_fen, row[0], reason, None, by)
    return row[0]


async def refund(db, leader_id: int, by: int | None) -> None:
    """Give the remaining balance back through the provider. Safe to retry: a crash after
    the provider call leaves `refunding`, and the retry reuses the same idempotency key."""
    async with db.transaction() as s:
        row = (
            await s.execute(
                text(
                    "UPDATE leaders.leaders SET deposit_status = 'refunding' WHERE id = :id AND "
                    "deposit_status IN ('paid', 'refunding') "
                    "RETURNING deposit_balance_fen, deposit_intent_id"
                ),
                {"id": leader_id},
            )
        ).first()
    if row is None:
        raise DepositNotRefundable("this leader has no paid deposit to refund")
    balance, intent_id = row
    reference = None
    if balance > 0:
        result = await get_provider().refund(
            intent_id,
            balance,
            idempotency_key=f"deposit:{leader_id}:refund",
            metadata={"kind": "deposit_refund", "leader_id": leader_id},
        )
        reference = result.id
    async with db.transaction() as s:
        moved = (
            await s.execute(
                text(
                    "UPDATE leaders.leaders SET deposit_status = 'refunded', deposit_balance_fen = 0"
                    " WHERE id = :id AND deposit_status = 'refunding' AND deposit_balance_fen = :b "
                    "RETURNING id"
                ),
                {"id": leader_id, "b": balance},
            )
        ).first()
        if moved is not None:
            await _entry(s, leader_id, "refund", -balance, 0, "deposit refunded", reference, by)


async def history(s: AsyncSession, leader_id: int, after_id: int | None, limit: int) -> list:
    q = (
        select(DepositEntry)
        .where(DepositEntry.leader_id == leader_id)
        .order_by(col(DepositEntry.id).desc())
        .limit(limit + 1)
    )
    if after_id:
        q = q.where(col(DepositEntry.id) < after_id)
    return list((await s.execute(q)).scalars())
