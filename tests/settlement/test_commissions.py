"""Commissions: pending on pickup, released after the after-sales window, reduced or
clawed back by refunds (a receivable when available cannot cover it, repaid first from
later earnings), each event applied once however it is delivered."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from services.common.db import get_db
from services.settlement import ledger
from services.settlement.service import release_due
from tests.helpers import eventually, problem_of, shopper, staff
from tests.settlement.conftest import (
    balances,
    deliver,
    leader_api,
    new_leader,
    pickup_envelope,
    refund_envelope,
)


async def _commission(line_id: int) -> dict:
    async with get_db("settlement").session() as s:
        row = (
            await s.execute(
                text("SELECT * FROM settlement.commissions WHERE order_line_id = :l"),
                {"l": line_id},
            )
        ).one()
    return dict(row._mapping)


async def test_release_moves_only_due_commissions_and_runs_once(sdb):
    leader = new_leader()
    due = pickup_envelope(leader, [1980, 1000], due=True)  # 238 + 120
    fresh = pickup_envelope(leader, [5000])  # 600, still inside the after-sales window
    for env in (due, fresh):
        assert await deliver(env)
    assert (await balances(leader))["pending_fen"] == 958

    await release_due(sdb)
    b = await balances(leader)
    assert (b["pending_fen"], b["available_fen"]) == (600, 358)
    due_line = due["payload"]["lines"][0]["line_id"]
    assert (await _commission(due_line))["status"] == "available"
    fresh_line = fresh["payload"]["lines"][0]["line_id"]
    assert (await _commission(fresh_line))["status"] == "pending"

    await release_due(sdb)  # nothing more is due: a second run moves nothing
    assert (await balances(leader))["available_fen"] == 358


async def test_release_handles_many_rows_in_batches(sdb):
    leaders = [new_leader() for _ in range(5)]
    for leader in leaders:
        await deliver(pickup_envelope(leader, [100] * 60, due=True))  # 60 x 12 fen
    await release_due(sdb, batch=70)  # several batches, leaders split across them
    for leader in leaders:
        b = await balances(leader)
        assert (b["pending_fen"], b["available_fen"]) == (0, 720)


async def test_concurrent_release_runs_release_each_line_once(sdb):
    leaders = [new_leader() for _ in range(6)]
    for leader in leaders:
        await deliver(pickup_envelope(leader, [100] * 50, due=True))  # 50 x 12 fen
    # four runs at once walk the same backlog in small batches: a line one of them
    # released is skipped by the others, never released (or paid out) twice
    runs = await asyncio.gather(*(release_due(sdb, batch=37) for _ in range(4)))
    assert sum(runs) >= 6 * 50
    for leader in leaders:
        b = await balances(leader)
        assert (b["pending_fen"], b["available_fen"]) == (0, 600)
    async with get_db("settlement").session() as s:
        moved = (
            await s.execute(
                text(
                    "SELECT count(*) FROM settlement.ledger_entries e JOIN "
                    "settlement.accounts a ON a.id = e.account_id JOIN "
                    "settlement.ledger_transactions t ON t.id = e.transaction_id "
                    "WHERE a.leader_id = ANY(:l) AND a.kind = 'available' "
                    "AND t.kind = 'commission_released'"
                ),
                {"l": leaders},
            )
        ).scalar_one()
    assert 6 <= moved <= 6 * 4 * 2  # a few postings per leader, summing to exactly 600 each


async def test_refund_before_release_reduces_pending(sdb):
    leader = new_leader()
    env = pickup_envelope(leader, [1980])  # 238
    await deliver(env)
    line = env["payload"]["lines"][0]["line_id"]
    await deliver(refund_envelope(leader, [(line, 990)]))  # half refunded: 990 x 12% = 119
    c = await _commission(line)
    assert (c["refunded_fen"], c["reversed_fen"], c["status"]) == (990, 119, "pending")
    assert (await balances(leader))["pending_fen"] == 119
    await deliver(refund_envelope(leader, [(line, 990)]))  # the rest: nothing left to release
    assert (await _commission(line))["status"] == "reversed"
    assert (await balances(leader))["pending_fen"] == 0


async def test_partial_refunds_round_like_one_refund(sdb):
    leader = new_leader()
    env = pickup_envelope(leader, [1005])  # 120.6 -> 121
    await deliver(env)
    line = env["payload"]["lines"][0]["line_id"]
    for _ in range(3):
        await deliver(refund_envelope(leader, [(line, 1)]))
    # 1002 x 12% = 120.24 -> 120: one fen clawed back in total, not three roundings
    assert (await _commission(line))["reversed_fen"] == 1
    assert (await balances(leader))["pending_fen"] == 120


async def test_refund_after_release_claws_back_then_records_a_receivable(sdb):
    leader = new_leader()
    env = pickup_envelope(leader, [20000], due=True)  # 2400
    await deliver(env)
    await release_due(sdb)
    line = env["payload"]["lines"][0]["line_id"]
    await deliver(refund_envelope(leader, [(line, 5000)]))  # claw back 600 from available
    b = await balances(leader)
    assert (b["available_fen"], b["receivable_fen"]) == (1800, 0)

    # the leader withdraws most of it, then the rest of the order is refunded
    from services.settlement.service import request_withdrawal

    await request_withdrawal(sdb, leader, 1500)
    await deliver(refund_envelope(leader, [(line, 15000)]))  # claw back 1800; only 300 there
    b = await balances(leader)
    assert (b["available_fen"], b["withdrawing_fen"], b["receivable_fen"]) == (0, 1500, 1500)

    # later earnings pay the debt first
    await deliver(pickup_envelope(leader, [5000], due=True))  # 600
    await release_due(sdb)
    b = await balances(leader)
    assert (b["available_fen"], b["receivable_fen"]) == (0, 900)
    await deliver(pickup_envelope(leader, [10000], due=True))  # 1200: 900 repays, 300 free
    await release_due(sdb)
    b = await balances(leader)
    assert (b["available_fen"], b["receivable_fen"]) == (300, 0)


async def test_refunds_of_lines_without_commission_are_ignored(sdb):
    leader = new_leader()
    env = refund_envelope(leader, [(123, 1500)], reason="group_threshold_missed")
    assert await deliver(env)  # recorded in the inbox, nothing else
    async with sdb.session() as s:
        posted = (
            await s.execute(
                text("SELECT count(*) FROM settlement.ledger_transactions WHERE reference LIKE :r"),
                {"r": f"refund:{env['payload']['refund_id']}:%"},
            )
        ).scalar_one()
        handled = (
            await s.execute(
                text("SELECT count(*) FROM settlement.inbox WHERE event_id = :e"),
                {"e": env["id"]},
            )
        ).scalar_one()
    assert (posted, handled) == (0, 1)
    assert await balances(leader) == {**await balances(leader), "pending_fen": 0}


async def test_the_same_events_delivered_concurrently_record_once(sdb):
    leader = new_leader()
    pickup = pickup_envelope(leader, [1980, 990])
    results = await asyncio.gather(*(deliver(pickup) for _ in range(5)))
    assert sorted(results) == [False] * 4 + [True]
    assert (await balances(leader))["pending_fen"] == 238 + 119

    line = pickup["payload"]["lines"][0]["line_id"]
    refund = refund_envelope(leader, [(line, 1980)])
    results = await asyncio.gather(*(deliver(refund) for _ in range(5)))
    assert sorted(results) == [False] * 4 + [True]
    # the same refund re-published under another event id still applies once
    again = {**refund_envelope(leader, []), "payload": refund["payload"]}
    assert await deliver(again)
    assert (await balances(leader))["pending_fen"] == 119


async def test_refund_events_reach_settlement_through_the_broker(platform, sdb):
    from services.common.celery_app import celery  # after infra has set the test's queue

    leader = new_leader()
    pickup = pickup_envelope(leader, [1980])
    refund = refund_envelope(leader, [(pickup["payload"]["lines"][0]["line_id"], 1980)])
    celery.send_task("events.dispatch", args=[pickup])
    await eventually(lambda: _pending_is(leader, 238))
    for _ in range(2):  # delivered twice: clawed back once
        celery.send_task("events.dispatch", args=[refund])

    async def handled():
        async with sdb.session() as s:
            return (
                await s.execute(
                    text("SELECT count(*) FROM settlement.inbox WHERE event_id = :e"),
                    {"e": refund["id"]},
                )
            ).scalar_one() == 1

    await eventually(handled)
    await eventually(lambda: _pending_is(leader, 0))
    async with sdb.session() as s:
        clawbacks = (
            await s.execute(
                text("SELECT count(*) FROM settlement.commission_refunds WHERE refund_id = :r"),
                {"r": refund["payload"]["refund_id"]},
            )
        ).scalar_one()
    assert clawbacks == 1


async def _pending_is(leader: int, fen: int) -> bool:
    return (await balances(leader))["pending_fen"] == fen


async def test_the_scheduled_release_task_runs_in_the_worker(platform, sdb):
    from services.common.celery_app import celery  # after infra has set the test's queue

    leader = new_leader()
    await deliver(pickup_envelope(leader, [2000], due=True))
    celery.send_task("settlement.release_commissions")
    await eventually(lambda: _available_is(leader, 240))


async def _available_is(leader: int, fen: int) -> bool:
    return (await balances(leader))["available_fen"] == fen


async def test_release_route_is_for_staff(gateway_url, sdb):
    leader = new_leader()
    await deliver(pickup_envelope(leader, [1000], due=True))
    me = leader_api(gateway_url, leader)
    r = await me.post("/settlement/jobs/release")
    assert r.status_code == 403 and problem_of(r)["code"] == "wrong_role"
    ops = await staff(gateway_url)
    r = await ops.post("/settlement/jobs/release")
    assert r.status_code == 200 and r.json()["released"] >= 1
    r = await me.get("/settlement/me/balance")
    assert r.status_code == 200, r.text
    assert {k: r.json()[k] for k in ("pending_fen", "available_fen", "withdrawn_fen")} == {
        "pending_fen": 0,
        "available_fen": 120,
        "withdrawn_fen": 0,
    }
    r = await me.get("/settlement/me/commissions")
    assert [c["status"] for c in r.json()["items"]] == ["available"]
    buyer = await shopper(gateway_url)
    for path in ("/settlement/me/balance", "/settlement/me/commissions"):
        r = await buyer.get(path)
        assert r.status_code == 403, r.text
    for api in (me, ops, buyer):
        await api.aclose()


async def test_ledger_rejects_edits_and_the_check_finds_corruption(sdb):
    leader = new_leader()
    await deliver(pickup_envelope(leader, [1000]))
    async with sdb.transaction() as s:
        with pytest.raises(Exception, match="append-only"):
            async with s.begin_nested():
                await s.execute(text("UPDATE settlement.ledger_entries SET amount_fen = 1"))
        # a one-sided entry, seen by the check inside this transaction, then rolled back
        acct = (
            await s.execute(
                text("SELECT id FROM settlement.accounts WHERE code = :c"),
                {"c": ledger.leader_account(leader, ledger.PENDING)},
            )
        ).scalar_one()
        tx = (
            await s.execute(
                text(
                    "INSERT INTO settlement.ledger_transactions (reference, kind, memo, created_at) "
                    "VALUES ('corrupt', 'test', '', now()) RETURNING id"
                )
            )
        ).scalar_one()
        await s.execute(
            text(
                "INSERT INTO settlement.ledger_entries (transaction_id, account_id, amount_fen, "
                "currency, created_at) VALUES (:t, :a, 5, 'CNY', now())"
            ),
            {"t": tx, "a": acct},
        )
        problems = await ledger.check_invariants(s)
        await s.rollback()
    assert any("corrupt sums to 5" in p for p in problems)
    assert any(
        "holds" in p and ledger.leader_account(leader, ledger.PENDING) in p for p in problems
    )


def test_check_ledger_command(infra):
    groupbuy = Path(sys.executable).with_name("groupbuy")
    done = subprocess.run(
        [str(groupbuy), "check-ledger"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ledger ok" in done.stdout


async def test_an_after_sales_refund_consumed_before_its_pickup_still_counts(sdb):
    leader = new_leader()
    pickup = pickup_envelope(leader, [1980])
    line = pickup["payload"]["lines"][0]["line_id"]
    assert await deliver(refund_envelope(leader, [(line, 990)]))  # arrives first
    assert (await balances(leader))["pending_fen"] == 0
    await deliver(pickup)
    assert (await balances(leader))["pending_fen"] == 119  # 990 x 12%, not 238
    assert (await _commission(line))["reversed_fen"] == 119


async def test_pickup_and_refund_racing_always_agree(sdb):
    for _ in range(10):
        leader = new_leader()
        pickup = pickup_envelope(leader, [1000, 3000])
        first, second = (ln["line_id"] for ln in pickup["payload"]["lines"])
        refund = refund_envelope(leader, [(first, 1000), (second, 500)])
        await asyncio.gather(deliver(refund), deliver(pickup))
        assert (await balances(leader))["pending_fen"] == 300  # 2500 x 12%
