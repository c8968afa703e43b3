"""Random sequences of pickups, refunds (delivered again at random), releases,
withdrawals, approvals, failed payouts and rejections: after every step the leader's
balances match a simple model and the whole ledger passes the invariant check."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from services.common.errors import DomainError
from services.common.money import commission_for
from services.common.payments import PaymentProvider
from services.settlement import ledger, service
from tests.settlement.conftest import (
    balances,
    deliver,
    new_leader,
    pickup_envelope,
    refund_envelope,
)

RATE = Decimal("0.12")

actions = st.lists(
    st.one_of(
        st.tuples(
            st.just("pickup"),
            st.lists(st.integers(1, 30000), min_size=1, max_size=3),
            st.sampled_from([True, True, False]),  # mostly past the after-sales window
        ),
        st.tuples(st.just("refund"), st.integers(0, 20), st.integers(1, 30000)),
        st.tuples(st.just("release")),
        # None: everything available, which makes later claw-backs become receivables
        st.tuples(st.just("withdraw"), st.one_of(st.none(), st.integers(0, 6000))),
        st.tuples(st.just("approve"), st.booleans()),
        st.tuples(st.just("reject")),
        st.tuples(st.just("redeliver")),
    ),
    max_size=14,
)

_accounts: dict[str, str] = {}


async def payout_accounts(provider: PaymentProvider) -> dict[str, str]:
    if not _accounts:
        for kind, meta in (("ok", {}), ("fail", {"test_mode": "transfers_fail"})):
            _accounts[kind] = await provider.create_account(
                idempotency_key=f"property-{kind}-{id(_accounts)}", metadata=meta
            )
    return _accounts


class Model:
    def __init__(self) -> None:
        self.lines: list[dict] = []
        self.pending = self.available = self.withdrawing = self.withdrawn = self.debt = 0
        self.requested: list[tuple[int, int]] = []

    def pickup(self, env: dict, due: bool) -> None:
        for ln in env["payload"]["lines"]:
            amount = commission_for(ln["base_fen"], RATE)
            self.pending += amount
            status = "pending" if amount else "none"
            self.lines.append(
                {"id": ln["line_id"], "base": ln["base_fen"], "refunded": 0, "amount": amount}
                | {"reversed": 0, "status": status, "due": due}
            )

    def refund(self, line: dict, amount: int) -> None:
        if line["status"] == "none":
            return  # a zero commission: nothing to claw back or release
        line["refunded"] = min(line["base"], line["refunded"] + amount)
        left = commission_for(line["base"] - line["refunded"], RATE)
        claw = line["amount"] - line["reversed"] - left
        line["reversed"] += claw
        if line["status"] == "pending":
            self.pending -= claw
        else:
            covered = min(self.available, claw)
            self.available -= covered
            self.debt += claw - covered

    def release(self) -> None:
        for line in self.lines:
            if line["due"] and line["status"] == "pending":
                line["status"] = "available"
                amount = line["amount"] - line["reversed"]
                repay = min(amount, self.debt)
                self.pending -= amount
                self.available += amount - repay
                self.debt -= repay

    def expected(self) -> dict:
        return {
            "pending_fen": self.pending,
            "available_fen": self.available,
            "withdrawing_fen": self.withdrawing,
            "withdrawn_fen": self.withdrawn,
            "receivable_fen": self.debt,
        }


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=actions)
# the paths random draws of this size rarely reach: a claw-back larger than what is left
# (a receivable) repaid by later earnings, a failed payout, duplicate deliveries
@example(
    steps=[
        ("pickup", [20000], True),
        ("release",),
        ("withdraw", None),
        ("refund", 0, 20000),
        ("redeliver",),
        ("pickup", [5000, 9000], True),
        ("release",),
        ("withdraw", 1000),
        ("approve", False),
        ("withdraw", None),
        ("approve", True),
    ]
)
async def test_random_sequences_keep_the_ledger_right(sdb, steps):
    leader = new_leader()
    model = Model()
    provider = PaymentProvider()
    last_event: dict | None = None
    try:
        accounts = await payout_accounts(provider)
        for step in steps:
            kind = step[0]
            if kind == "pickup":
                env = pickup_envelope(leader, step[1], due=step[2])
                await deliver(env)
                model.pickup(env, step[2])
                last_event = env
            elif kind == "refund" and model.lines:
                line = model.lines[step[1] % len(model.lines)]
                env = refund_envelope(leader, [(line["id"], step[2])])
                await deliver(env)
                model.refund(line, step[2])
                last_event = env
            elif kind == "release":
                await service.release_due(sdb)
                model.release()
            elif kind == "withdraw":
                amount = model.available if step[1] is None else step[1]
                try:
                    w = await service.request_withdrawal(sdb, leader, amount)
                except DomainError as e:
                    expected = "below_minimum" if amount < 1000 else "insufficient_balance"
                    assert e.code == expected
                    assert amount < 1000 or amount > model.available
                else:
                    assert 1000 <= amount <= model.available
                    model.available -= amount
                    model.withdrawing += amount
                    model.requested.append((w.id, amount))
            elif kind == "approve" and model.requested:
                wid, amount = model.requested.pop(0)
                async with sdb.transaction() as s:
                    await s.execute(
                        text(
                            "INSERT INTO settlement.payout_accounts (leader_id, "
                            "provider_account_id, created_at) VALUES (:l, :a, now()) "
                            "ON CONFLICT (leader_id) DO UPDATE SET provider_account_id = :a"
                        ),
                        {"l": leader, "a": accounts["ok" if step[1] else "fail"]},
                    )
                w = await service.approve_withdrawal(sdb, wid, 1, provider)
                assert w.status == ("paid" if step[1] else "failed")
                model.withdrawing -= amount
                if step[1]:
                    model.withdrawn += amount
                else:
                    model.available += amount
            elif kind == "reject" and model.requested:
                wid, amount = model.requested.pop(0)
                await service.reject_withdrawal(sdb, wid, 1, "property test")
                model.withdrawing -= amount
                model.available += amount
            elif kind == "redeliver" and last_event is not None:
                assert await deliver(last_event) is False

            got = await balances(leader)
            assert {k: got[k] for k in model.expected()} == model.expected(), steps
            async with sdb.session() as s:
                assert await ledger.check_invariants(s) == []
    finally:
        await provider.aclose()
