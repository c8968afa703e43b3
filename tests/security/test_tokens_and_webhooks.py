"""Forged, expired and tampered JWTs are refused at the gateway and by every service
called directly; a webhook without a valid, fresh signature is refused and changes nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import text

from services.common.auth import issue_token
from services.common.db import get_db
from services.common.payments import sign_webhook
from services.common.settings import get_settings
from tests.helpers import problem_of

# a route per service that a staff token may call (GET, so a refusal writes nothing)
TARGETS = {
    "catalog": "/catalog/products",
    "orders": "/orders",
    "leaders": "/leaders/applications",
    "settlement": "/settlement/me/balance",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**over) -> dict:
    now = int(time.time())
    claims = {
        "sub": "1",
        "roles": ["staff"],
        "leader_id": None,
        "name": "mallory",
        "iss": get_settings().jwt_issuer,
        "iat": now,
        "exp": now + 600,
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not ...}


def _hs256_by_hand(secret: bytes, claims: dict) -> str:
    """PyJWT refuses a PEM as an HMAC secret, which is the very confusion to try."""
    signing_input = _b64(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64(orjson.dumps(claims))
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(sig)}"


def _rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _forged_tokens() -> dict[str, str]:
    s = get_settings()
    key = _rsa_key()
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    genuine_shopper = issue_token(42, ["shopper"])
    head, payload, sig = genuine_shopper.split(".")
    escalated = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    escalated["roles"] = ["staff"]
    return {
        "expired": issue_token(1, ["staff"], ttl_s=-60),
        "unsigned": jwt.encode(_claims(), s.jwt_secret, algorithm="HS256").rsplit(".", 1)[0] + ".",
        "alg_none": jwt.encode(_claims(), None, algorithm="none"),
        "alg_none_upper": _b64(b'{"alg":"NONE","typ":"JWT"}')
        + "."
        + _b64(orjson.dumps(_claims()))
        + ".",
        "rs256_signed": jwt.encode(_claims(), key, algorithm="RS256"),
        "public_key_as_hmac_secret": _hs256_by_hand(public_pem, _claims()),
        "hs512_same_secret": jwt.encode(_claims(), s.jwt_secret, algorithm="HS512"),
        "wrong_secret": jwt.encode(
            _claims(), "guessed-secret-0123456789abcdef-xyz", algorithm="HS256"
        ),
        "wrong_issuer": jwt.encode(_claims(iss="someone-else"), s.jwt_secret, algorithm="HS256"),
        "no_expiry": jwt.encode(_claims(exp=...), s.jwt_secret, algorithm="HS256"),
        "tampered_payload": f"{head}.{_b64(orjson.dumps(escalated))}.{sig}",
        "unknown_role": jwt.encode(_claims(roles=["root"]), s.jwt_secret, algorithm="HS256"),
        "garbage": "not.a.jwt",
    }


FORGED = _forged_tokens()


@pytest.mark.parametrize("kind", sorted(FORGED))
async def test_forged_tokens_are_401_at_the_gateway_and_at_every_service(
    kind, gateway_url, platform, world
):
    token = FORGED[kind]
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=10) as c:
        for service, path in TARGETS.items():
            for base in (gateway_url, platform.service_url(service)):
                r = await c.get(base + path, headers=headers)
                assert r.status_code == 401, (kind, base, path, r.status_code, r.text)
                assert problem_of(r)["code"] in {"invalid_token", "token_expired"}
        # a forged token does not get a write through either
        r = await c.post(
            f"{platform.service_url('catalog')}/catalog/products",
            headers=headers,
            json={"sku": f"FORGED-{kind}", "name": "x", "category": "fresh", "list_price_fen": 1},
        )
        assert r.status_code == 401, r.text
    async with get_db("catalog").session() as s:
        n = await s.execute(
            text("SELECT count(*) FROM catalog.products WHERE sku = :sku"),
            {"sku": f"FORGED-{kind}"},
        )
        assert n.scalar_one() == 0


async def test_a_genuine_staff_token_passes_the_same_checks(gateway_url, platform, world):
    """The control: the refusals above are about the token, not the routes."""
    headers = {"authorization": f"Bearer {issue_token(1, ['staff'])}"}
    async with httpx.AsyncClient(timeout=10) as c:
        for service, path in TARGETS.items():
            for base in (gateway_url, platform.service_url(service)):
                r = await c.get(base + path, headers=headers)
                assert r.status_code != 401, (base, path, r.text)


async def test_a_shopper_token_cannot_be_promoted_by_editing_its_payload(gateway_url, world):
    alice = world["alice"]
    head, payload, sig = alice.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    for change in ({"roles": ["shopper", "staff"]}, {"sub": str(world["bob"].user["id"])}):
        edited = f"{head}.{_b64(orjson.dumps({**claims, **change}))}.{sig}"
        async with httpx.AsyncClient(base_url=gateway_url) as c:
            r = await c.get(
                f"/orders/{world['orders']['bob']['id']}",
                headers={"authorization": f"Bearer {edited}"},
            )
        assert r.status_code == 401 and problem_of(r)["code"] == "invalid_token"


# --- webhooks ---------------------------------------------------------------------------


async def _order_state(order_id: int, event_id: str) -> tuple:
    """The order, the provider events stored for it or under `event_id`, and its refunds:
    only this order's rows (the whole tables also grow with the webhooks and refunds of
    earlier tests' orders, which the provider and the beat deliver whenever they do)."""
    async with get_db("orders").session() as s:
        row = (
            await s.execute(
                text("SELECT status, paid_at, refunded_fen FROM orders.orders WHERE id = :id"),
                {"id": order_id},
            )
        ).one()
        events = (
            await s.execute(
                text(
                    "SELECT count(*) FROM orders.payment_events WHERE id = :e "
                    "OR payload #>> '{data,object,metadata,order_id}' = :o"
                ),
                {"e": event_id, "o": str(order_id)},
            )
        ).scalar_one()
        refunds = (
            await s.execute(
                text("SELECT count(*) FROM orders.refunds WHERE order_id = :o"), {"o": order_id}
            )
        ).scalar_one()
    return tuple(row), events, refunds


def _success_event(order: dict, event_id: str) -> bytes:
    return orjson.dumps(
        {
            "id": event_id,
            "type": "payment_intent.succeeded",
            "data": {
                "object": {
                    "id": f"pi_forged_{event_id}",
                    "object": "payment_intent",
                    "amount": order["total_fen"],
                    "currency": "cny",
                    "status": "succeeded",
                    "metadata": {"kind": "order", "order_id": str(order["id"])},
                }
            },
        }
    )


@pytest.mark.parametrize("how", ["none", "wrong_secret", "garbled", "replayed_old", "future"])
async def test_a_webhook_without_a_valid_fresh_signature_is_400_and_changes_nothing(
    how, gateway_url, platform, world
):
    order = world["orders"]["alice"]
    secret = get_settings().payments_webhook_secret
    for base in (gateway_url, platform.service_url("orders")):
        event_id = f"evt_forged_{how}_{base[-5:]}"
        body = _success_event(order, event_id)
        tolerance = get_settings().payments_webhook_tolerance_s
        header = {
            "none": None,
            "wrong_secret": sign_webhook(body, "whsec_attacker"),
            "garbled": "t=abc,v1=zz",
            "replayed_old": sign_webhook(body, secret, int(time.time()) - tolerance - 60),
            "future": sign_webhook(body, secret, int(time.time()) + tolerance + 60),
        }[how]
        before = await _order_state(order["id"], event_id)
        headers = {"content-type": "application/json"}
        if header:
            headers["stripe-signature"] = header
        async with httpx.AsyncClient(timeout=10) as c:
            prefix = "/api/v1" if base == gateway_url else ""
            url = (base if base == gateway_url else base + prefix) + "/payments/webhook"
            r = await c.post(url, content=body, headers=headers)
        assert r.status_code == 400, (how, base, r.text)
        problem_of(r)
        assert await _order_state(order["id"], event_id) == before
        assert before[0][0] == "pending_payment"


async def test_a_signed_replay_of_a_stored_event_changes_nothing(gateway_url, world):
    """A fresh signature over an already-seen event id is acknowledged but not acted on."""
    secret = get_settings().payments_webhook_secret
    body = orjson.dumps({"id": "evt_harmless_1", "type": "charge.updated", "data": {"object": {}}})
    async with httpx.AsyncClient(base_url=gateway_url) as c:
        first = await c.post(
            "/payments/webhook",
            content=body,
            headers={"stripe-signature": sign_webhook(body, secret)},
        )
        state = await _order_state(world["orders"]["alice"]["id"], "evt_harmless_1")
        again = await c.post(
            "/payments/webhook",
            content=body,
            headers={"stripe-signature": sign_webhook(body, secret)},
        )
    assert first.status_code == again.status_code == 200
    assert first.json()["duplicate"] is False and again.json()["duplicate"] is True
    assert await _order_state(world["orders"]["alice"]["id"], "evt_harmless_1") == state
