"""Pure settlement rules at their edges: working days for the payout SLA, month
bounds in the platform's zone, the statement CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest

from services.common.errors import InvalidInput
from services.settlement.models import Withdrawal
from services.settlement.service import (
    STATEMENT_COLUMNS,
    add_working_days,
    is_overdue,
    month_bounds,
    statement_csv,
)

TZ = "Asia/Shanghai"


def shanghai(iso: str) -> datetime:
    return datetime.fromisoformat(iso + "+08:00").astimezone(UTC)


@pytest.mark.parametrize(
    ("requested", "deadline"),
    [
        ("2026-11-23T10:00", "2026-11-25T10:00"),  # Monday -> Wednesday
        ("2026-11-26T10:00", "2026-11-30T10:00"),  # Thursday -> Monday
        ("2026-11-27T23:30", "2026-12-01T23:30"),  # Friday night -> Tuesday
        ("2026-11-28T09:00", "2026-12-01T09:00"),  # Saturday -> Tuesday
    ],
)
def test_two_working_days_skip_the_weekend(requested, deadline):
    assert add_working_days(shanghai(requested), 2, TZ) == shanghai(deadline)


def test_only_undecided_or_unpaid_requests_are_overdue():
    w = Withdrawal(id=1, leader_id=1, amount_fen=1000, created_at=shanghai("2026-11-27T10:00"))
    just_before, after = shanghai("2026-12-01T09:59"), shanghai("2026-12-01T10:01")
    assert not is_overdue(w, just_before)
    assert is_overdue(w, after)
    w.status = "approved"
    assert is_overdue(w, after)
    for done in ("paid", "failed", "rejected"):
        w.status = done
        assert not is_overdue(w, after)


def test_month_bounds_are_local_midnights():
    start, end = month_bounds("2026-12", TZ)
    assert (start, end) == (shanghai("2026-12-01T00:00"), shanghai("2027-01-01T00:00"))
    with pytest.raises(InvalidInput):
        month_bounds("2026-13", TZ)


def test_statement_csv_opens_cleanly_in_a_spreadsheet():
    st = {
        "days": [
            {
                "date": "2026-03-05",
                "tier": "core",
                "lines": 3,
                "base_fen": 100005,
                "commission_fen": 16001,
                "pending_fen": 5,
                "available_fen": 15996,
            }
        ],
        "withdrawals": [{"id": 9, "date": "2026-03-06", "amount_fen": 1000, "status": "paid"}],
    }
    body = statement_csv(st)
    assert body.startswith("\ufeff".encode())
    text = body.decode("utf-8-sig")
    assert "\r\n" in text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == STATEMENT_COLUMNS
    assert (rows[0]["base_yuan"], rows[0]["commission_yuan"], rows[0]["pending_yuan"]) == (
        "1000.05",
        "160.01",
        "0.05",
    )
    assert (rows[1]["kind"], rows[1]["withdrawal_yuan"], rows[1]["withdrawal_status"]) == (
        "withdrawal",
        "10.00",
        "paid",
    )
