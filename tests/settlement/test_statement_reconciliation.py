"""Statements (JSON and a spreadsheet-friendly CSV) and the reconciliation of ledger
payouts with the provider's transfers."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from structlog.testing import capture_logs

from services.common.clock import clock
from services.common.payments import PaymentProvider
from services.settlement import service
from tests.helpers import problem_of, shopper, staff
from tests.settlement.conftest import (
    deliver,
    earn_available,
    leader_api,
    new_leader,
    pickup_envelope,
    refund_envelope,
)


def at(iso: str) -> datetime:
    return datetime.fromisoformat(iso).replace(tzinfo=UTC)


async def test_statement_by_day_and_tier_with_csv(gateway_url, sdb):
    leader = new_leader()
    # 10:00 and (next local day) 01:00 in Shanghai; standard then advanced tier
    first = pickup_envelope(leader, [1980, 1005], picked_up_at=at("2026-03-05T02:00:00"))
    second = pickup_envelope(
        leader, [10000], rate="0.14", tier="advanced", picked_up_at=at("2026-03-05T17:00:00")
    )
    for env in (first, second):
        await deliver(env)
    await deliver(refund_envelope(leader, [(first["payload"]["lines"][1]["line_id"], 1005)]))
    await service.release_due(sdb)
    later = pickup_envelope(leader, [500], picked_up_at=at("2026-03-20T04:00:00"))
    await deliver(later)  # due, but not released yet: still pending
    await deliver(pickup_envelope(leader, [700], picked_up_at=at("2026-04-01T04:00:00")))

    me = leader_api(gateway_url, leader)
    r = await me.get("/settlement/me/statement", params={"month": "2026-03"})
    assert r.status_code == 200, r.text
    st = r.json()
    assert st["days"] == [
        {
            "date": "2026-03-05",
            "tier": "standard",
            "lines": 2,
            "base_fen": 1980,
            "commission_fen": 238,
            "pending_fen": 0,
            "available_fen": 238,
        },
        {
            "date": "2026-03-06",
            "tier": "advanced",
            "lines": 1,
            "base_fen": 10000,
            "commission_fen": 1400,
            "pending_fen": 0,
            "available_fen": 1400,
        },
        {
            "date": "2026-03-20",
            "tier": "standard",
            "lines": 1,
            "base_fen": 500,
            "commission_fen": 60,
            "pending_fen": 60,
            "available_fen": 0,
        },
    ]
    assert st["totals"] == {
        "commission_fen": 1698,
        "pending_fen": 60,
        "available_fen": 1638,
        "withdrawn_fen": 0,
    }

    r = await me.get(
        "/settlement/me/statement", params={"month": "2026-03"}, headers={"accept": "text/csv"}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert [(x["date"], x["tier"], x["commission_yuan"], x["available_yuan"]) for x in rows] == [
        ("2026-03-05", "standard", "2.38", "2.38"),
        ("2026-03-06", "advanced", "14.00", "14.00"),
        ("2026-03-20", "standard", "0.60", "0.00"),
    ]
    assert rows[1]["base_yuan"] == "100.00"

    # this month's statement lists the withdrawals made in it
    await earn_available(leader, 1000)
    w = await service.request_withdrawal(sdb, leader, 1000)
    month = clock.now().astimezone(ZoneInfo("Asia/Shanghai"))
    r = await me.get("/settlement/me/statement", params={"month": month.strftime("%Y-%m")})
    assert [(x["id"], x["amount_fen"], x["status"]) for x in r.json()["withdrawals"]] == [
        (w.id, 1000, "requested")
    ]
    r = await me.get(
        "/settlement/me/statement",
        params={"month": month.strftime("%Y-%m")},
        headers={"accept": "text/csv"},
    )
    text_rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert {"kind": "withdrawal", "withdrawal_yuan": "10.00"}.items() <= text_rows[-1].items()

    r = await me.get("/settlement/me/statement", params={"month": "2026-13"})
    assert r.status_code == 422 and problem_of(r)["code"] == "invalid_month"
    r = await me.get("/settlement/me/statement", params={"month": "March"})
    assert r.status_code == 422, r.text
    buyer = await shopper(gateway_url)
    r = await buyer.get("/settlement/me/statement", params={"month": "2026-03"})
    assert r.status_code == 403, r.text
    for api in (me, buyer):
        await api.aclose()


async def test_reconciliation_lists_what_the_ledger_does_not_know(gateway_url, sdb):
    leader = new_leader()
    await earn_available(leader, 2500)
    w = await service.request_withdrawal(sdb, leader, 2500)
    paid = await service.approve_withdrawal(sdb, w.id, staff_id=1)
    assert paid.status == "paid"
    ops = await staff(gateway_url)
    everything = {"from": "2000-01-01", "to": "2100-01-01"}
    r = await ops.get("/settlement/reconciliation", params=everything)
    assert r.status_code == 200, r.text
    clean = r.json()
    assert clean["differences"] == []
    assert clean["transfers"]["ledger_fen"] == clean["transfers"]["provider_fen"] >= 2500
    assert set(clean["out_of_scope"]) == {"charges", "refunds"}

    # money sent to the leader's account outside settlement shows up as a difference
    provider = PaymentProvider()
    try:
        acct = await service.connected_account(sdb, leader, provider)
        stray = await provider.transfer(777, acct, idempotency_key=f"stray-{leader}")
    finally:
        await provider.aclose()
    r = await ops.get("/settlement/reconciliation", params=everything)
    report = r.json()
    assert report["differences"] == [
        {
            "kind": "not_in_ledger",
            "withdrawal_id": None,
            "withdrawal_status": None,
            "transfer_id": stray.id,
            "ledger_fen": 0,
            "provider_fen": 777,
        }
    ]
    assert report["transfers"]["provider_fen"] - report["transfers"]["ledger_fen"] == 777
    # imported late: the Celery app reads its queue from the settings infra has set
    from services.settlement.tasks import reconcile_and_warn

    with capture_logs() as logs:
        daily = await reconcile_and_warn(sdb)
    assert [d["transfer_id"] for d in daily["differences"]] == [stray.id]
    assert any(
        e["event"] == "reconciliation_differences" and e["log_level"] == "warning" for e in logs
    )

    r = await ops.get(
        "/settlement/reconciliation", params={"from": "2026-02-01", "to": "2026-01-01"}
    )
    assert r.status_code == 422 and problem_of(r)["code"] == "invalid_period"
    me = leader_api(gateway_url, leader)
    r = await me.get("/settlement/reconciliation")
    assert r.status_code == 403, r.text
    for api in (ops, me):
        await api.aclose()
