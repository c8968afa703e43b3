"""The ledger's one way of posting: `post` is `post_many` of one transaction, so a single
posting and a batch keep the same rules (once per reference, zero legs open no account,
no leader account below zero), and every row carries the configured currency."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from services.common.settings import get_settings, override_settings
from services.settlement import ledger
from tests.settlement.conftest import new_leader


def _earn(leader: int, amount: int) -> list[ledger.Leg]:
    return [
        ledger.Leg(ledger.leader_account(leader, ledger.PENDING), amount),
        ledger.Leg(ledger.COMMISSION_EXPENSE, -amount),
        ledger.Leg(ledger.leader_account(leader, ledger.RECEIVABLE), 0),
    ]


async def _rows(s, leader: int) -> tuple[dict, list]:
    accounts = {
        r.kind: (r.balance_fen, r.currency)
        for r in await s.execute(
            text(
                "SELECT kind, balance_fen, currency FROM settlement.accounts WHERE leader_id = :l"
            ),
            {"l": leader},
        )
    }
    entries = (
        await s.execute(
            text(
                "SELECT t.reference, e.amount_fen, e.currency FROM settlement.ledger_entries e "
                "JOIN settlement.ledger_transactions t ON t.id = e.transaction_id "
                "JOIN settlement.accounts a ON a.id = e.account_id WHERE a.leader_id = :l "
                "ORDER BY e.id"
            ),
            {"l": leader},
        )
    ).all()
    return accounts, [tuple(e) for e in entries]


async def test_post_is_once_per_reference_and_a_zero_leg_opens_no_account(sdb):
    leader = new_leader()
    async with sdb.transaction() as s:
        assert await ledger.post(s, f"test:{leader}:1", "test", _earn(leader, 500))
        assert not await ledger.post(s, f"test:{leader}:1", "test", _earn(leader, 500))
        assert (
            await ledger.post_many(
                s,
                [
                    ledger.Posting(f"test:{leader}:1", "test", _earn(leader, 500)),
                    ledger.Posting(f"test:{leader}:2", "test", _earn(leader, 300)),
                ],
            )
            == 1
        )
    async with sdb.session() as s:
        accounts, entries = await _rows(s, leader)
    assert accounts == {ledger.PENDING: (800, "CNY")}
    assert entries == [(f"test:{leader}:1", 500, "CNY"), (f"test:{leader}:2", 300, "CNY")]


async def test_post_refuses_an_unbalanced_transaction_or_an_overdraft(sdb):
    leader = new_leader()
    with pytest.raises(ValueError):
        async with sdb.transaction() as s:
            await ledger.post(s, f"test:{leader}:x", "test", [ledger.Leg(ledger.PAYOUTS, 1)])
    with pytest.raises(ledger.InsufficientBalance):
        async with sdb.transaction() as s:
            await ledger.post(
                s,
                f"test:{leader}:y",
                "test",
                [
                    ledger.Leg(ledger.leader_account(leader, ledger.AVAILABLE), -1),
                    ledger.Leg(ledger.PAYOUTS, 1),
                ],
            )
    async with sdb.session() as s:
        assert await _rows(s, leader) == ({}, [])


async def test_the_ledger_books_in_the_configured_currency(sdb):
    before = get_settings()
    override_settings(before.model_copy(update={"currency": "HKD"}))
    try:
        leader = new_leader()
        async with sdb.transaction() as s:
            # between two new accounts: no account the rest of the suite uses is opened here
            legs = [
                ledger.Leg(ledger.leader_account(leader, ledger.PENDING), 700),
                ledger.Leg(ledger.leader_account(leader, ledger.RECEIVABLE), -700),
            ]
            await ledger.post(s, f"test:{leader}:hkd", "test", legs)
    finally:
        override_settings(before)
    async with sdb.session() as s:
        accounts, entries = await _rows(s, leader)
    assert accounts == {ledger.PENDING: (700, "HKD"), ledger.RECEIVABLE: (-700, "HKD")}
    assert sorted(entries) == [
        (f"test:{leader}:hkd", -700, "HKD"),
        (f"test:{leader}:hkd", 700, "HKD"),
    ]
