"""Becoming a leader and paying the deposit, through the gateway with every real process."""

from __future__ import annotations

import asyncio

import httpx
import orjson
from sqlalchemy import text

from services.common.db import get_db
from services.common.payments import sign_webhook
from tests.helpers import eventually, problem_of, shopper, staff
from tests.leaders.helpers import application, new_leader


async def test_application_rules_and_outcomes(gateway_url):
    base = gateway_url
    ops = await staff(base)
    alice = await shopper(base)

    r = await alice.post("/leaders/applications", json=application(group_size=99))
    assert r.status_code == 422 and problem_of(r)["code"] == "group_too_small"
    r = await alice.post("/leaders/applications", json=application(phone="12345"))
    assert r.status_code == 422 and problem_of(r)["code"] == "invalid_input"

    r = await alice.post("/leaders/applications", json=application(group_size=100))
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["status"] == "pending"
    # one open application per shopper
    r = await alice.post("/leaders/applications", json=application())
    assert r.status_code == 409 and problem_of(r)["code"] == "application_already_open"

    # only staff list and decide
    r = await alice.get("/leaders/applications")
    assert r.status_code == 403, r.text
    r = await alice.post(f"/leaders/applications/{first['id']}/approve")
    assert r.status_code == 403, r.text
    r = await ops.get("/leaders/applications", params={"status": "pending"})
    assert first["id"] in [a["id"] for a in r.json()["items"]]

    r = await ops.post(f"/leaders/applications/{first['id']}/reject", json={"reason": ""})
    assert r.status_code == 422, r.text
    r = await ops.post(
        f"/leaders/applications/{first['id']}/reject", json={"reason": "pickup point too small"}
    )
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    r = await ops.post(f"/leaders/applications/{first['id']}/approve")
    assert r.status_code == 409 and problem_of(r)["code"] == "application_not_pending"

    # the applicant sees the outcome and may apply again
    r = await alice.get("/leaders/me")
    me = r.json()
    assert me["id"] is None and me["application"]["status"] == "rejected"
    assert me["application"]["reason"] == "pickup point too small"
    r = await alice.post("/leaders/applications", json=application())
    assert r.status_code == 201, r.text
    second = r.json()
    r = await ops.post(f"/leaders/applications/{second['id']}/approve")
    assert r.status_code == 200 and r.json()["leader_id"]

    # approved: a leader in preparation, active, with an empty group and no deposit yet
    r = await alice.get("/leaders/me")
    me = r.json()
    assert me["application"]["status"] == "approved"
    assert (me["status"], me["tier"], me["commission_rate"]) == ("active", "preparation", "0")
    assert me["deposit"] == {"status": "unpaid", "amount_fen": 16800, "balance_fen": 0}
    assert me["onboarding_done"] is False
    r = await alice.post("/leaders/applications", json=application())
    assert r.status_code == 409 and problem_of(r)["code"] == "already_leader"
    async with get_db("leaders").session() as s:
        members = (
            await s.execute(
                text("SELECT count(*) FROM leaders.users WHERE bound_leader_id = :l"),
                {"l": me["id"]},
            )
        ).scalar_one()
    assert members == 0
    # the token still says shopper until alice signs in again
    r = await alice.post("/leaders/me/deposit")
    assert r.status_code == 403, r.text


async def test_two_simultaneous_applications_leave_one_open(gateway_url):
    bob = await shopper(gateway_url)
    results = await asyncio.gather(
        *[bob.post("/leaders/applications", json=application()) for _ in range(4)]
    )
    assert sorted(r.status_code for r in results) == [201, 409, 409, 409]


async def _deposit_entries(leader_id: int) -> list:
    async with get_db("leaders").session() as s:
        return (
            await s.execute(
                text(
                    "SELECT kind, amount_fen, balance_after_fen, reason FROM leaders.deposit_entries"
                    " WHERE leader_id = :l ORDER BY id"
                ),
                {"l": leader_id},
            )
        ).all()


async def test_deposit_paid_once_under_retries(gateway_url):
    base = gateway_url
    ops = await staff(base)
    leader = await new_leader(base, ops)

    r = await leader.post("/leaders/me/deposit")
    assert r.status_code == 200, r.text
    intent = r.json()["payment"]["intent_id"]
    assert intent and r.json()["deposit"]["status"] == "unpaid"
    r = await leader.post("/leaders/me/deposit")
    assert r.json()["payment"]["intent_id"] == intent  # the same intent, not a second one

    # many retries at once: paid once
    results = await asyncio.gather(
        *[
            leader.post("/leaders/me/deposit", json={"payment_method": "pm_card_visa"})
            for _ in range(5)
        ]
    )
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    assert {r.json()["payment"]["intent_id"] for r in results} == {intent}
    r = await leader.get("/leaders/me")
    assert r.json()["deposit"] == {"status": "paid", "amount_fen": 16800, "balance_fen": 16800}

    # the provider's webhook arrives too and is consumed: still one payment
    async def webhook_consumed():
        async with get_db("leaders").session() as s:
            return (
                await s.execute(
                    text("SELECT count(*) FROM leaders.inbox WHERE topic = :t"),
                    {"t": "payment.deposit_succeeded"},
                )
            ).scalar_one()

    await eventually(webhook_consumed)
    assert [(k, a) for k, a, _, _ in await _deposit_entries(leader.leader_id)] == [
        ("payment", 16800)
    ]


async def test_deposit_confirmed_only_by_the_webhook(gateway_url):
    """A client that confirms with the provider directly: the signed webhook pays it."""
    base = gateway_url
    ops = await staff(base)
    leader = await new_leader(base, ops)
    r = await leader.post("/leaders/me/deposit")
    intent = r.json()["payment"]["intent_id"]
    # deliver a signed event exactly as the provider would
    event = orjson.dumps(
        {
            "id": f"evt_dep_{intent}",
            "type": "payment_intent.succeeded",
            "data": {
                "object": {
                    "id": intent,
                    "amount": 16800,
                    "currency": "cny",
                    "status": "succeeded",
                    "metadata": {"kind": "deposit", "leader_id": str(leader.leader_id)},
                }
            },
        }
    )
    async with httpx.AsyncClient(base_url=base) as anon:
        for _ in range(2):  # redelivered: still paid once
            r = await anon.post(
                "/payments/webhook",
                content=event,
                headers={"stripe-signature": sign_webhook(event, "whsec_dev_only")},
            )
            assert r.status_code == 200, r.text

    async def paid():
        r = await leader.get("/leaders/me")
        return r.json()["deposit"]["status"] == "paid"

    await eventually(paid)
    assert len(await _deposit_entries(leader.leader_id)) == 1


async def test_deductions_history_and_refund_on_leaving(gateway_url):
    base = gateway_url
    ops = await staff(base)
    leader = await new_leader(base, ops)
    other = await new_leader(base, ops)
    lid = leader.leader_id

    r = await ops.post(
        f"/leaders/{lid}/deposit/deductions", json={"amount_fen": 100, "reason": "x"}
    )
    assert r.status_code == 409 and problem_of(r)["code"] == "deposit_not_paid"
    r = await leader.post("/leaders/me/deposit", json={"payment_method": "pm_card_visa"})
    assert r.json()["deposit"]["status"] == "paid"

    r = await leader.post(
        f"/leaders/{lid}/deposit/deductions", json={"amount_fen": 100, "reason": "late"}
    )
    assert r.status_code == 403, r.text
    r = await ops.post(f"/leaders/{lid}/deposit/deductions", json={"amount_fen": 5000})
    assert r.status_code == 422  # a reason is required
    r = await ops.post(
        f"/leaders/{lid}/deposit/deductions",
        json={"amount_fen": 5000, "reason": "goods left out in the rain"},
    )
    assert r.status_code == 201 and r.json()["balance_fen"] == 11800
    # never below zero, even when two deductions race for the same money
    results = await asyncio.gather(
        *[
            ops.post(
                f"/leaders/{lid}/deposit/deductions",
                json={"amount_fen": 10000, "reason": f"violation {i}"},
            )
            for i in range(2)
        ]
    )
    assert sorted(r.status_code for r in results) == [201, 409]
    assert problem_of([r for r in results if r.status_code == 409][0])["code"] == (
        "deposit_insufficient"
    )

    # the history: the leader's own and staff's view agree; another leader is refused
    r = await leader.get("/leaders/me/deposit/history")
    mine = r.json()["items"]
    assert [(e["kind"], e["amount_fen"], e["balance_after_fen"]) for e in mine] == [
        ("deduction", -10000, 1800),
        ("deduction", -5000, 11800),
        ("payment", 16800, 16800),
    ]
    r = await ops.get(f"/leaders/{lid}/deposit/history")
    assert r.json()["items"] == mine
    r = await other.get(f"/leaders/{lid}/deposit/history")
    assert r.status_code == 403, r.text

    # leaving in good standing: the rest goes back through the provider, once
    r = await ops.post(
        f"/leaders/{lid}/terminate", json={"reason": "moving away", "good_standing": True}
    )
    assert r.status_code == 200, r.text
    r = await ops.get(f"/leaders/{lid}/deposit/history")
    entries = r.json()["items"]
    assert (entries[0]["kind"], entries[0]["amount_fen"], entries[0]["balance_after_fen"]) == (
        "refund",
        -1800,
        0,
    )
    assert entries[0]["reference"].startswith("re_")
    r = await ops.post(f"/leaders/{lid}/deposit/refund")
    assert r.status_code == 409 and problem_of(r)["code"] == "deposit_not_refundable"
