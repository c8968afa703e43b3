"""The payment fake the platform is tested against behaves as the provider documents:
refunds are counted per charge (not across the whole store), keys replay, and a list of
one kind holds that kind only."""

from __future__ import annotations

import os
import uuid

import httpx
import pytest

from services.common.payments import PaymentProvider, ProviderRejected


@pytest.fixture
def provider(platform):
    return PaymentProvider(base_url=os.environ["PAYMENTS_API_BASE"])


async def paid_intent(provider: PaymentProvider, amount: int) -> str:
    tag = uuid.uuid4().hex
    intent = await provider.create_intent(amount, idempotency_key=f"{tag}:i", metadata={})
    done = await provider.confirm_intent(intent.id, "pm_card_visa", idempotency_key=f"{tag}:c")
    assert done.succeeded
    return intent.id


async def charge_of(platform, intent_id: str) -> dict:
    base = os.environ["PAYMENTS_API_BASE"]
    async with httpx.AsyncClient(base_url=base, auth=("sk_test_x", "")) as http:
        intent = (await http.get(f"/v1/payment_intents/{intent_id}")).json()
        charge = intent["latest_charge"]
        charge_id = charge["id"] if isinstance(charge, dict) else charge
        return (await http.get(f"/v1/charges/{charge_id}")).json()


async def test_refunds_are_summed_per_charge(platform, provider):
    first = await paid_intent(provider, 1000)
    second = await paid_intent(provider, 700)
    tag = uuid.uuid4().hex
    await provider.refund(first, 300, idempotency_key=f"{tag}:1")
    await provider.refund(first, 200, idempotency_key=f"{tag}:2")
    await provider.refund(second, 700, idempotency_key=f"{tag}:3")
    # a replayed refund is the same refund, not a third one
    await provider.refund(first, 200, idempotency_key=f"{tag}:2")

    a, b = await charge_of(platform, first), await charge_of(platform, second)
    assert (a["amount_refunded"], a["refunded"]) == (500, False)
    assert (b["amount_refunded"], b["refunded"]) == (700, True)
    assert sorted(r["amount"] for r in a["refunds"]["data"]) == [200, 300]


async def test_a_reused_key_with_other_parameters_is_refused(platform, provider):
    key = f"{uuid.uuid4().hex}:i"
    await provider.create_intent(1000, idempotency_key=key, metadata={})
    with pytest.raises(ProviderRejected):
        await provider.create_intent(1200, idempotency_key=key, metadata={})
