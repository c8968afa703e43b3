"""Settlement rules: commission per order line, recorded as pending on pickup."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import select

from services.common.money import commission_for
from services.common.settings import get_settings

from . import ledger
from .models import Commission


async def record_commissions(s: AsyncSession, payload: dict) -> int:
    """On `order.picked_up`: one pending commission per line at the order's frozen rate."""
    leader_id = int(payload["leader_id"])
    rate = Decimal(payload["commission_rate"])
    picked_up_at = datetime.fromisoformat(payload["picked_up_at"])
    available_at = picked_up_at + timedelta(days=get_settings().commission_release_days)
    created = 0
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
        if row is None or amount == 0:
            continue
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
        created += 1
    return created


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
        "withdrawn_fen": b.get("withdrawn", 0),
        "receivable_fen": b[ledger.RECEIVABLE],
    }
