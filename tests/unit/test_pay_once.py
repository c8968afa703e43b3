"""The payment sequence orders and the leaders' deposit share (PaymentProvider.open_intent
and pay_once): which calls it makes, the Idempotency-Key of each (derived from our own
id, as the provider and the fake replay them), and how declines become our errors."""

from __future__ import annotations

import pytest

from services.common.payments import PaymentDeclined, PaymentProvider, ProviderRejected


def intent(status: str, error_code: str | None = None) -> dict:
    err = {"code": error_code} if error_code else None
    return {
        "id": "pi_1",
        "status": status,
        "amount": 1980,
        "currency": "cny",
        "last_payment_error": err,
    }


class Recorder(PaymentProvider):
    """The provider's answers given in order; every call recorded with its key."""

    def __init__(self, *answers) -> None:
        super().__init__(base_url="http://provider.invalid", api_key="sk_test")
        self.answers = list(answers)
        self.calls: list[tuple[str, str, str | None]] = []

    async def _call(self, method, path, data=None, idempotency_key=None):
        self.calls.append((method, path, idempotency_key))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_the_intent_is_keyed_by_our_record():
    p = Recorder(intent("requires_payment_method"))
    assert await p.open_intent("order:42", 1980, {"kind": "order", "order_id": 42}) == "pi_1"
    assert p.calls == [("POST", "/v1/payment_intents", "order:42:intent")]


async def test_each_attempt_has_its_own_keys():
    p = Recorder({"id": "pm_1"}, intent("succeeded"))
    paid = await p.pay_once("order:42", "pi_1", 3, card={"number": "4242424242424242"})
    assert paid.succeeded
    assert p.calls == [
        ("POST", "/v1/payment_methods", "order:42:card:3"),
        ("POST", "/v1/payment_intents/pi_1/confirm", "order:42:confirm:3"),
    ]
    p = Recorder(intent("succeeded"))
    await p.pay_once("deposit:7", "pi_1", 1, "pm_card_visa")
    assert p.calls == [("POST", "/v1/payment_intents/pi_1/confirm", "deposit:7:confirm:1")]


async def test_a_refused_confirm_answers_with_the_intent_as_it_stands():
    # e.g. a twin call confirmed it first: the provider refuses the second confirm
    p = Recorder(ProviderRejected("already confirmed"), intent("succeeded"))
    assert (await p.pay_once("order:42", "pi_1", 2, "pm_card_visa")).succeeded
    assert p.calls[1] == ("GET", "/v1/payment_intents/pi_1", None)


async def test_a_declined_card_is_our_error_whichever_way_the_provider_says_it():
    p = Recorder(PaymentDeclined("declined", code="card_declined"))
    with pytest.raises(PaymentDeclined):
        await p.pay_once("order:42", "pi_1", 1, "pm_card_visa_chargeDeclined")
    p = Recorder(intent("requires_payment_method", "insufficient_funds"))
    with pytest.raises(PaymentDeclined) as e:
        await p.pay_once("deposit:7", "pi_1", 1, "pm_card_visa")
    assert e.value.code == "insufficient_funds"
    p = Recorder(intent("requires_payment_method"))
    with pytest.raises(PaymentDeclined) as e:
        await p.pay_once("deposit:7", "pi_1", 1, "pm_card_visa")
    assert e.value.code == "card_declined"


async def test_an_intent_still_in_progress_is_returned_not_raised():
    p = Recorder(intent("requires_action"))
    assert (await p.pay_once("order:42", "pi_1", 1, "pm_card_visa")).status == "requires_action"
