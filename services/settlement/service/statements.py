"""Monthly statements of a leader, as JSON and CSV."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.clock import local_datetime
from services.common.errors import InvalidInput
from services.common.money import format_yuan
from services.common.settings import get_settings


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
