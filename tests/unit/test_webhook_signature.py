import time

import orjson
import pytest

from services.common.payments import InvalidSignature, sign_webhook, verify_webhook

SECRET = "whsec_test"
EVENT = orjson.dumps({"id": "evt_1", "type": "payment_intent.succeeded", "data": {"object": {}}})


def test_a_correctly_signed_event_is_accepted():
    header = sign_webhook(EVENT, SECRET)
    assert verify_webhook(EVENT, header, secret=SECRET)["id"] == "evt_1"


@pytest.mark.parametrize("header", [None, "", "garbage", "t=abc,v1=00", "v1=deadbeef"])
def test_missing_or_malformed_signatures_are_refused(header):
    with pytest.raises(InvalidSignature):
        verify_webhook(EVENT, header, secret=SECRET)


def test_a_signature_with_another_secret_is_refused():
    with pytest.raises(InvalidSignature):
        verify_webhook(EVENT, sign_webhook(EVENT, "whsec_other"), secret=SECRET)


def test_a_tampered_payload_is_refused():
    header = sign_webhook(EVENT, SECRET)
    with pytest.raises(InvalidSignature):
        verify_webhook(EVENT.replace(b"evt_1", b"evt_2"), header, secret=SECRET)


def test_a_replayed_old_signature_is_refused():
    old = int(time.time()) - 3600
    with pytest.raises(InvalidSignature) as e:
        verify_webhook(EVENT, sign_webhook(EVENT, SECRET, old), secret=SECRET, tolerance_s=300)
    assert e.value.code == "stale_signature"
