"""Settlement races on real PostgreSQL through the real processes, repeated RACE_ROUNDS
times: concurrent withdrawals against balances covering only some of them, concurrent
payout approvals (and an approval racing a rejection) paying once at the provider, and a
commission release racing a refund claw-back and a withdrawal for the same leader.
After every round the whole ledger must keep its invariants (`groupbuy check-ledger`)."""

from __future__ import annotations

import asyncio
import os
from collections import Counter

from sqlalchemy import text

from services.common.auth import issue_token
from services.common.db import get_db
from services.common.payments import PaymentProvider
from services.settlement import ledger
from services.settlement.service import get_withdrawal, release_due, retry_payouts
from tests.helpers import Api, eventually, problem_of
from tests.settlement.conftest import (
    balances,
    deliver,
    earn_available,
    leader_api,
    new_leader,
    next_id,
    pickup_envelope,
    refund_envelope,
)

ROUNDS = int(os.environ.get("RACE_ROUNDS", "10"))
LEADERS = 4  # leaders racing in each round of the withdrawal race
REQUESTS = 6  # concurrent withdrawals each of them fires
COVERED = 3  # how many of those their available balance covers
AMOUNT = 1000  # fen per withdrawal (the minimum)
APPROVERS = 3  # staff approving the same withdrawal at once
REJECTERS = 2  # staff rejecting it at the same time, every other round

FIGURES: Counter = Counter()


async def ledger_problems() -> list[str]:
    async with get_db("settlement").session() as s:
        return await ledger.check_invariants(s)


async def negative_leader_accounts(leader_ids: list[int]) -> list[tuple]:
    async with get_db("settlement").session() as s:
        rows = await s.execute(
            text(
                "SELECT code, balance_fen FROM settlement.accounts WHERE leader_id = ANY(:ids) "
                "AND ((kind <> :rec AND balance_fen < 0) OR (kind = :rec AND balance_fen > 0))"
            ),
            {"ids": leader_ids, "rec": ledger.RECEIVABLE},
        )
        return [tuple(r) for r in rows]


def staff_api(base: str) -> Api:
    """A staff member of their own (several staff act at once)."""
    return Api(base, issue_token(next_id(), ["staff"], None, "race staff"))


async def transfers_by_withdrawal() -> Counter:
    provider = PaymentProvider()
    try:
        return Counter(
            t.metadata.get("withdrawal_id")
            for t in await provider.list_transfers()
            if t.metadata.get("withdrawal_id")
        )
    finally:
        await provider.aclose()


async def test_concurrent_withdrawals_succeed_only_as_far_as_the_balance_covers(gateway_url):
    for _ in range(ROUNDS):
        leaders = [new_leader() for _ in range(LEADERS)]
        # a little more than COVERED withdrawals, less than one more
        for leader in leaders:
            await earn_available(leader, COVERED * AMOUNT + AMOUNT // 2)
        apis = [leader_api(gateway_url, leader) for leader in leaders]
        try:
            results = await asyncio.gather(
                *(
                    api.post("/settlement/withdrawals", json={"amount_fen": AMOUNT})
                    for api in apis
                    for _ in range(REQUESTS)
                )
            )
        finally:
            for api in apis:
                await api.aclose()
        for i, leader in enumerate(leaders):
            mine = results[i * REQUESTS : (i + 1) * REQUESTS]
            codes = sorted(r.status_code for r in mine)
            assert codes == [201] * COVERED + [422] * (REQUESTS - COVERED), [
                (r.status_code, r.text) for r in mine
            ]
            for r in mine:
                if r.status_code == 422:
                    assert problem_of(r)["code"] == "insufficient_balance"
            b = await balances(leader)
            assert b["available_fen"] == AMOUNT // 2, b
            assert b["withdrawing_fen"] == COVERED * AMOUNT, b
            assert b["receivable_fen"] == 0, b
        assert await negative_leader_accounts(leaders) == []
        assert await ledger_problems() == []
        FIGURES["withdrawals_won"] += COVERED * LEADERS
        FIGURES["withdrawals_refused"] += (REQUESTS - COVERED) * LEADERS
        FIGURES["ledger_checks"] += 1
    print(
        f"\nwithdrawal race: {ROUNDS} rounds x {LEADERS} leaders x {REQUESTS} requests: "
        f"{FIGURES['withdrawals_won']} won, {FIGURES['withdrawals_refused']} refused, "
        f"{ROUNDS} ledger checks passed"
    )


async def _withdrawal(gateway_url: str, leader: int) -> int:
    api = leader_api(gateway_url, leader)
    try:
        r = await api.post("/settlement/withdrawals", json={"amount_fen": AMOUNT})
    finally:
        await api.aclose()
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def _paid(sdb, wid: int) -> dict | None:
    async with sdb.session() as s:
        w = await get_withdrawal(s, wid)
    return {"status": w.status} if w.status != "approved" else None


async def test_concurrent_approvals_and_a_racing_rejection_pay_once(gateway_url):
    sdb = get_db("settlement")
    approvers = [staff_api(gateway_url) for _ in range(APPROVERS + REJECTERS)]
    decided: list[tuple[int, int, str]] = []  # (withdrawal, leader, outcome)
    try:
        for round_no in range(ROUNDS):
            leader = new_leader()
            await earn_available(leader, 2 * AMOUNT)
            wid = await _withdrawal(gateway_url, leader)
            # every other round rejections race the approvals
            rejecting = round_no % 2 == 1

            async def decide(i: int, api: Api, wid=wid, rejecting=rejecting):
                if rejecting and i >= APPROVERS:
                    return await api.post(
                        f"/settlement/withdrawals/{wid}/reject", json={"reason": "race"}
                    )
                return await api.post(f"/settlement/withdrawals/{wid}/approve")

            n = APPROVERS + REJECTERS if rejecting else APPROVERS
            calls = [decide(i, a) for i, a in enumerate(approvers[:n])]
            if round_no % 4 == 1:
                calls.reverse()  # the rejections sent first
            # the payout retry job runs at the same time: it must not pay a second time
            *results, _, _ = await asyncio.gather(*calls, retry_payouts(sdb), retry_payouts(sdb))
            codes = sorted(r.status_code for r in results)
            assert codes == [200] + [409] * (n - 1), [(r.status_code, r.text) for r in results]
            for r in results:
                if r.status_code == 409:
                    assert problem_of(r)["code"] == "withdrawal_not_requested"
            winner = next(r for r in results if r.status_code == 200).json()
            if winner["status"] == "approved":
                # the retry job had claimed the payout first: it pays, the approval does not
                winner = await eventually(lambda wid=wid: _paid(sdb, wid), timeout=60)
                FIGURES["paid_by_the_job"] += 1
            b = await balances(leader)
            if winner["status"] == "rejected":
                assert b["available_fen"] == 2 * AMOUNT and b["withdrawing_fen"] == 0, b
                FIGURES["rejections_won"] += 1
            else:
                assert winner["status"] == "paid", winner
                assert b["available_fen"] == AMOUNT and b["withdrawn_fen"] == AMOUNT, b
                assert b["withdrawing_fen"] == 0, b
                FIGURES["approvals_won"] += 1
            decided.append((wid, leader, winner["status"]))
            assert await ledger_problems() == []
            FIGURES["decisions"] += n
    finally:
        for api in approvers:
            await api.aclose()
    # exactly one transfer per paid withdrawal at the provider, none for a rejected one
    transfers = await transfers_by_withdrawal()
    for wid, _, status in decided:
        assert transfers[str(wid)] == (1 if status == "paid" else 0), (wid, status)
    print(
        f"\npayout race: {ROUNDS} withdrawals x {APPROVERS} approvers (+{REJECTERS} rejecters "
        f"every other round) and 2 payout retry jobs at once, {FIGURES['decisions']} decisions: "
        f"{FIGURES['approvals_won']} paid with one transfer each ({FIGURES['paid_by_the_job']} paid by the retry job), "
        f"{FIGURES['rejections_won']} rejected with none"
    )


async def test_release_racing_a_claw_back_and_a_withdrawal_keeps_the_ledger(gateway_url):
    """Each round a leader has AMOUNT available and a matured pending commission; the
    release job (twice), a refund of that commission's line and a withdrawal of the whole
    available balance all run at once. Whatever the order, the withdrawal is covered
    (the claw-back can only take back what the release added), the refunded commission
    ends worth nothing, and the ledger holds."""
    sdb = get_db("settlement")
    for _ in range(ROUNDS):
        leader = new_leader()
        await earn_available(leader, AMOUNT)
        base = 5000  # a 10% commission of 500 fen
        pickup = pickup_envelope(leader, [base], due=True, rate="0.1")
        assert await deliver(pickup)
        line = pickup["payload"]["lines"][0]["line_id"]
        refund = refund_envelope(leader, [(line, base)])
        api = leader_api(gateway_url, leader)
        try:
            results = await asyncio.gather(
                release_due(sdb),
                release_due(sdb),
                deliver(refund),
                api.post("/settlement/withdrawals", json={"amount_fen": AMOUNT}),
            )
        finally:
            await api.aclose()
        withdrawal = results[3]
        assert results[2] is True
        assert withdrawal.status_code == 201, withdrawal.text
        # a later release finds nothing left to move for this leader
        await release_due(sdb)
        b = await balances(leader)
        assert b == {
            "leader_id": leader,
            "pending_fen": 0,
            "available_fen": 0,
            "withdrawing_fen": AMOUNT,
            "withdrawn_fen": 0,
            "receivable_fen": 0,
        }, b
        async with sdb.session() as s:
            owed = (
                await s.execute(
                    text(
                        "SELECT amount_fen - reversed_fen FROM settlement.commissions "
                        "WHERE order_line_id = :l"
                    ),
                    {"l": line},
                )
            ).scalar_one()
        assert owed == 0
        assert await negative_leader_accounts([leader]) == []
        assert await ledger_problems() == []
        FIGURES["release_rounds"] += 1
    print(
        f"\nrelease/claw-back/withdrawal race: {FIGURES['release_rounds']} rounds, "
        "ledger invariants held after each"
    )
