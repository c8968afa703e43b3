"""Withdrawals and payouts through the gateway: limits, races, approval paying once,
failures returning the money, the payout SLA flag, and a crash mid-payout."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
from sqlalchemy import text

from services.common.clock import Clock
from services.common.payments import PaymentProvider
from services.settlement import service
from services.settlement.service.withdrawals import _decide
from tests.helpers import problem_of, shopper, staff
from tests.settlement.conftest import balances, earn_available, leader_api, new_leader


async def transfers_for(withdrawal_id: int) -> list:
    provider = PaymentProvider()
    try:
        return [
            t
            for t in await provider.list_transfers()
            if t.metadata.get("withdrawal_id") == str(withdrawal_id)
        ]
    finally:
        await provider.aclose()


async def give_failing_account(sdb, leader_id: int) -> None:
    """The leader's connected account exists already and refuses transfers."""
    provider = PaymentProvider()
    try:
        acct = await provider.create_account(
            idempotency_key=f"test-failing-{leader_id}", metadata={"test_mode": "transfers_fail"}
        )
    finally:
        await provider.aclose()
    async with sdb.transaction() as s:
        await s.execute(
            text(
                "INSERT INTO settlement.payout_accounts (leader_id, provider_account_id, "
                "created_at) VALUES (:l, :a, now())"
            ),
            {"l": leader_id, "a": acct},
        )


async def test_request_limits_and_who_may_call(gateway_url, sdb):
    leader = new_leader()
    await earn_available(leader, 2500)
    me = leader_api(gateway_url, leader)
    r = await me.post("/settlement/withdrawals", json={"amount_fen": 999})
    assert r.status_code == 422 and problem_of(r)["code"] == "below_minimum"
    r = await me.post("/settlement/withdrawals", json={"amount_fen": 2501})
    assert r.status_code == 422 and problem_of(r)["code"] == "insufficient_balance"
    r = await me.post("/settlement/withdrawals", json={"amount_fen": "ten"})
    assert r.status_code == 422 and problem_of(r)["code"] == "invalid_input"
    r = await me.get("/settlement/me/balance")
    assert (r.json()["available_fen"], r.json()["withdrawing_fen"]) == (2500, 0)  # nothing moved

    r = await me.post("/settlement/withdrawals", json={"amount_fen": 1000})
    assert r.status_code == 201, r.text
    w = r.json()
    assert (w["status"], w["amount_fen"], w["leader_id"], w["overdue"]) == (
        "requested",
        1000,
        leader,
        False,
    )
    r = await me.get("/settlement/me/balance")
    assert (r.json()["available_fen"], r.json()["withdrawing_fen"]) == (1500, 1000)

    buyer = await shopper(gateway_url)
    ops = await staff(gateway_url)
    for api in (buyer, ops):
        r = await api.post("/settlement/withdrawals", json={"amount_fen": 1000})
        assert r.status_code == 403, r.text
    r = await buyer.get("/settlement/withdrawals")
    assert r.status_code == 403, r.text
    for path in ("approve", "reject"):
        r = await me.post(f"/settlement/withdrawals/{w['id']}/{path}", json={"reason": "x"})
        assert r.status_code == 403, r.text
    for api in (me, buyer, ops):
        await api.aclose()


async def test_a_leader_sees_only_their_own_withdrawals_staff_see_all(gateway_url, sdb):
    alice, bob = new_leader(), new_leader()
    for leader in (alice, bob):
        await earn_available(leader, 3000)
    a, b = leader_api(gateway_url, alice), leader_api(gateway_url, bob)
    wa = (await a.post("/settlement/withdrawals", json={"amount_fen": 1000})).json()
    wb = (await b.post("/settlement/withdrawals", json={"amount_fen": 1200})).json()
    r = await a.get("/settlement/withdrawals")
    assert [w["id"] for w in r.json()["items"]] == [wa["id"]]
    r = await b.get("/settlement/withdrawals", params={"status": "requested"})
    assert [w["id"] for w in r.json()["items"]] == [wb["id"]]
    ops = await staff(gateway_url)
    r = await ops.get("/settlement/withdrawals", params={"status": "requested", "limit": 200})
    ids = {w["id"] for w in r.json()["items"]}
    assert {wa["id"], wb["id"]} <= ids
    r = await ops.get("/settlement/withdrawals", params={"status": "bogus"})
    assert r.status_code == 422, r.text
    # a leader cannot act on another's withdrawal (approval is staff-only anyway)
    r = await a.post(f"/settlement/withdrawals/{wb['id']}/approve")
    assert r.status_code == 403, r.text
    for api in (a, b, ops):
        await api.aclose()


async def test_twenty_concurrent_requests_covered_by_three(gateway_url, sdb):
    leader = new_leader()
    await earn_available(leader, 3500)
    me = leader_api(gateway_url, leader)
    results = await asyncio.gather(
        *(me.post("/settlement/withdrawals", json={"amount_fen": 1000}) for _ in range(20))
    )
    assert sorted(r.status_code for r in results) == [201] * 3 + [422] * 17
    assert {problem_of(r)["code"] for r in results if r.status_code == 422} == {
        "insufficient_balance"
    }
    b = await balances(leader)
    assert (b["available_fen"], b["withdrawing_fen"]) == (500, 3000)
    async with sdb.session() as s:
        count = (
            await s.execute(
                text("SELECT count(*) FROM settlement.withdrawals WHERE leader_id = :l"),
                {"l": leader},
            )
        ).scalar_one()
    assert count == 3
    await me.aclose()


async def test_approval_pays_once_even_when_approved_twice_at_once(gateway_url, sdb):
    leader = new_leader()
    await earn_available(leader, 5000)
    me = leader_api(gateway_url, leader)
    w = (await me.post("/settlement/withdrawals", json={"amount_fen": 3000})).json()
    ops, ops2 = await staff(gateway_url), await staff(gateway_url)
    r1, r2 = await asyncio.gather(
        ops.post(f"/settlement/withdrawals/{w['id']}/approve"),
        ops2.post(f"/settlement/withdrawals/{w['id']}/approve"),
    )
    assert sorted([r1.status_code, r2.status_code]) == [200, 409]
    won = r1 if r1.status_code == 200 else r2
    lost = r2 if won is r1 else r1
    assert problem_of(lost)["code"] == "withdrawal_not_requested"
    assert won.json()["status"] == "paid"
    transfers = await transfers_for(w["id"])
    assert len(transfers) == 1
    assert transfers[0].amount_fen == 3000
    assert won.json()["provider_transfer_id"] == transfers[0].id
    r = await me.get("/settlement/me/balance")
    assert {k: r.json()[k] for k in ("available_fen", "withdrawing_fen", "withdrawn_fen")} == {
        "available_fen": 2000,
        "withdrawing_fen": 0,
        "withdrawn_fen": 3000,
    }
    # the connected account was created once, on this first payout, and is reused
    w2 = (await me.post("/settlement/withdrawals", json={"amount_fen": 1000})).json()
    r = await ops.post(f"/settlement/withdrawals/{w2['id']}/approve")
    assert r.json()["status"] == "paid"
    assert (await transfers_for(w2["id"]))[0].destination == transfers[0].destination
    r = await ops.post(f"/settlement/withdrawals/{w2['id']}/reject", json={"reason": "late"})
    assert r.status_code == 409, r.text
    r = await ops.post("/settlement/withdrawals/999999999/approve")
    assert r.status_code == 404 and problem_of(r)["code"] == "withdrawal_not_found"
    r = await me.get("/settlement/me/balance")
    assert r.json()["withdrawn_fen"] == 4000
    for api in (me, ops, ops2):
        await api.aclose()


async def test_reject_needs_a_reason_and_returns_the_money(gateway_url, sdb):
    leader = new_leader()
    await earn_available(leader, 1500)
    me = leader_api(gateway_url, leader)
    w = (await me.post("/settlement/withdrawals", json={"amount_fen": 1500})).json()
    ops = await staff(gateway_url)
    r = await ops.post(f"/settlement/withdrawals/{w['id']}/reject", json={})
    assert r.status_code == 422, r.text
    r = await ops.post(f"/settlement/withdrawals/{w['id']}/reject", json={"reason": ""})
    assert r.status_code == 422, r.text
    assert (await balances(leader))["withdrawing_fen"] == 1500
    r = await ops.post(
        f"/settlement/withdrawals/{w['id']}/reject", json={"reason": "bank details mismatch"}
    )
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["reason"]) == ("rejected", "bank details mismatch")
    b = await balances(leader)
    assert (b["available_fen"], b["withdrawing_fen"], b["withdrawn_fen"]) == (1500, 0, 0)
    r = await ops.post(f"/settlement/withdrawals/{w['id']}/approve")
    assert r.status_code == 409  # a rejected request cannot be paid afterwards
    assert await transfers_for(w["id"]) == []
    for api in (me, ops):
        await api.aclose()


async def test_a_failed_payout_returns_the_money_to_available(gateway_url, sdb):
    leader = new_leader()
    await earn_available(leader, 2000)
    await give_failing_account(sdb, leader)
    me = leader_api(gateway_url, leader)
    w = (await me.post("/settlement/withdrawals", json={"amount_fen": 2000})).json()
    ops = await staff(gateway_url)
    r = await ops.post(f"/settlement/withdrawals/{w['id']}/approve")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "failed" and r.json()["failure_code"]
    b = await balances(leader)
    assert (b["available_fen"], b["withdrawing_fen"], b["withdrawn_fen"]) == (2000, 0, 0)
    assert await transfers_for(w["id"]) == []
    r = await me.get("/settlement/withdrawals", params={"status": "failed"})
    assert [x["id"] for x in r.json()["items"]] == [w["id"]]
    for api in (me, ops):
        await api.aclose()


async def test_requests_older_than_two_working_days_are_flagged(gateway_url, sdb, platform):
    leader = new_leader()
    await earn_available(leader, 2000)
    me = leader_api(gateway_url, leader)
    w = (await me.post("/settlement/withdrawals", json={"amount_fen": 1000})).json()
    ops = await staff(gateway_url)

    async def flag() -> bool:
        r = await ops.get("/settlement/withdrawals", params={"status": "requested", "limit": 200})
        return next(x for x in r.json()["items"] if x["id"] == w["id"])["overdue"]

    assert await flag() is False
    # a clock made now reads CLOCK_OFFSET_FILE, so it moves every process's time
    shared = Clock()
    shared.advance(timedelta(days=5))  # any 5 calendar days hold at least 3 working days
    try:
        assert await flag() is True
        r = await me.get("/settlement/withdrawals")
        assert r.json()["items"][0]["overdue"] is True
        # operators see it too: the settlement service's gauge counts it at scrape time
        async with httpx.AsyncClient() as c:
            scraped = (await c.get(f"{platform.service_url('settlement')}/metrics")).text
        gauge = next(
            line
            for line in scraped.splitlines()
            if line.startswith("groupbuy_withdrawals_waiting_past_sla")
        )
        assert float(gauge.split()[-1]) >= 1
    finally:
        shared.advance(timedelta(days=-5))
    for api in (me, ops):
        await api.aclose()


async def test_a_crash_after_the_transfer_never_pays_twice(platform, sdb, infra, monkeypatch):
    leader = new_leader()
    await earn_available(leader, 4000)
    w = await service.request_withdrawal(sdb, leader, 4000)
    async with sdb.transaction() as s:
        await _decide(s, w.id, "approved", staff_id=1)
    provider = PaymentProvider()
    try:
        # the approval's payout gets as far as the provider, then the process dies
        claimed = await service.begin_payout(sdb, w.id)
        made = await service.send_transfer(sdb, claimed, provider)
        async with sdb.session() as s:
            assert (await service.get_withdrawal(s, w.id)).status == "approved"
        assert (await balances(leader))["withdrawing_fen"] == 4000

        # a fresh attempt within the lease leaves the in-flight payout alone
        assert await service.retry_payouts(sdb, provider) == 0
        monkeypatch.setattr(infra.settings, "payout_retry_after_s", 0)
        assert await service.retry_payouts(sdb, provider) == 1
        assert await service.retry_payouts(sdb, provider) == 0
    finally:
        await provider.aclose()
    transfers = await transfers_for(w.id)
    assert [t.id for t in transfers] == [made.id]
    async with sdb.session() as s:
        paid = await service.get_withdrawal(s, w.id)
        posted = (
            await s.execute(
                text("SELECT count(*) FROM settlement.ledger_transactions WHERE reference = :r"),
                {"r": f"payout:{w.id}"},
            )
        ).scalar_one()
    assert (paid.status, paid.provider_transfer_id, posted) == ("paid", made.id, 1)
    b = await balances(leader)
    assert (b["withdrawing_fen"], b["withdrawn_fen"]) == (0, 4000)


async def test_a_crash_before_the_transfer_pays_on_retry(platform, sdb, infra, monkeypatch):
    leader = new_leader()
    await earn_available(leader, 1000)
    w = await service.request_withdrawal(sdb, leader, 1000)
    async with sdb.transaction() as s:
        await _decide(s, w.id, "approved", staff_id=1)
    assert await service.begin_payout(sdb, w.id) is not None  # then dies before calling out
    monkeypatch.setattr(infra.settings, "payout_retry_after_s", 0)
    provider = PaymentProvider()
    try:
        assert await service.retry_payouts(sdb, provider) == 1
    finally:
        await provider.aclose()
    assert len(await transfers_for(w.id)) == 1
    assert (await balances(leader))["withdrawn_fen"] == 1000
