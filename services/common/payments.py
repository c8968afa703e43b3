"""The payment provider behind a narrow interface (Stripe-compatible REST over aiohttp).

The rest of the platform never sees the provider's JSON: it gets `Intent`, `Refund`
and `Transfer` values and domain errors. Every mutating call carries an
Idempotency-Key derived from our own ids; callers also store the provider's object id
against their own record before acting on a retry, so correctness never depends on
the provider honouring the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from .errors import DomainError, PaymentFailed, PeerTimeout, PeerUnavailable
from .http import SessionPerLoop, peer_timeout
from .settings import get_settings


class PaymentDeclined(PaymentFailed):
    code, title = "card_declined", "The card was declined"


class ProviderRejected(DomainError):
    status, code, title = 502, "payment_provider_error", "The payment provider refused the call"


class InvalidSignature(DomainError):
    status, code, title = 400, "invalid_signature", "Webhook signature is missing or wrong"


@dataclass(frozen=True)
class Intent:
    id: str
    status: str
    amount_fen: int
    currency: str
    metadata: dict[str, str] = field(default_factory=dict)
    error_code: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True)
class Refund:
    id: str
    status: str
    amount_fen: int


@dataclass(frozen=True)
class Transfer:
    id: str
    amount_fen: int
    destination: str
    metadata: dict[str, str] = field(default_factory=dict)
    created: int = 0  # provider's epoch seconds


def _form(data: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for k, v in data.items():
        key = f"{prefix}[{k}]" if prefix else k
        if v is None:
            continue
        if isinstance(v, dict):
            out.extend(_form(v, key))
        elif isinstance(v, bool):
            out.append((key, "true" if v else "false"))
        else:
            out.append((key, str(v)))
    return out


def basic_auth(api_key: str) -> str:
    """The provider's scheme: the secret key as the user name, no password."""
    return "Basic " + base64.b64encode(f"{api_key}:".encode()).decode()


def _intent(obj: dict[str, Any]) -> Intent:
    err = obj.get("last_payment_error") or {}
    return Intent(
        id=obj["id"],
        status=obj["status"],
        amount_fen=int(obj["amount"]),
        currency=str(obj["currency"]).upper(),
        metadata=dict(obj.get("metadata") or {}),
        error_code=err.get("code"),
    )


class PaymentProvider:
    def __init__(self, base_url: str | None = None, api_key: str | None = None) -> None:
        self._base_url = base_url
        self._api_key = api_key
        self._sessions: SessionPerLoop | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._sessions is None:
            s = get_settings()
            self._sessions = SessionPerLoop(
                headers={"Authorization": basic_auth(self._api_key or s.payments_api_key)},
                timeout=peer_timeout(s.payments_timeout_s, 2.0),
                limit=50,
            )
        return self._sessions.get()

    @property
    def base_url(self) -> str:
        return (self._base_url or get_settings().payments_api_base).rstrip("/")

    async def _call(
        self,
        method: str,
        path: str,
        data: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        form = _form(data or {})
        url = f"{self.base_url}{path}"
        try:
            if method == "GET":
                call = self._session().get(url, params=form, headers=headers)
            else:
                call = self._session().post(url, data=form, headers=headers)
            async with call as resp:
                status, content = resp.status, await resp.read()
        except TimeoutError as e:
            raise PeerTimeout(
                "the payment provider did not answer in time", code="payment_provider_timeout"
            ) from e
        except aiohttp.ClientError as e:
            raise PeerUnavailable(
                "the payment provider is unavailable", code="payment_provider_unavailable"
            ) from e
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if status == 402:
            err = body.get("error") or {}
            raise PaymentDeclined(
                err.get("message") or "The card was declined",
                code=err.get("code") or "card_declined",
            )
        if status >= 500:
            raise PeerUnavailable(
                "the payment provider failed", code="payment_provider_unavailable"
            )
        if status >= 400:
            err = body.get("error") or {}
            raise ProviderRejected(err.get("message") or f"provider answered {status}")
        return body

    async def create_intent(
        self,
        amount_fen: int,
        *,
        idempotency_key: str,
        metadata: dict[str, Any],
        currency: str | None = None,
    ) -> Intent:
        body = await self._call(
            "POST",
            "/v1/payment_intents",
            {
                "amount": amount_fen,
                "currency": (currency or get_settings().currency).lower(),
                "metadata": metadata,
            },
            idempotency_key,
        )
        return _intent(body)

    async def confirm_intent(
        self, intent_id: str, payment_method: str | None, *, idempotency_key: str
    ) -> Intent:
        body = await self._call(
            "POST",
            f"/v1/payment_intents/{intent_id}/confirm",
            {"payment_method": payment_method},
            idempotency_key,
        )
        return _intent(body)

    # Paying one of our records (an order, a deposit): its intent and each attempt to
    # confirm it, every call keyed by `ref` ("order:42"), our own id for the record.

    async def open_intent(self, ref: str, amount_fen: int, metadata: dict[str, Any]) -> str:
        """The id of `ref`'s one intent: a repeated call gets the same intent back."""
        intent = await self.create_intent(
            amount_fen, idempotency_key=f"{ref}:intent", metadata=metadata
        )
        return intent.id

    async def pay_once(
        self,
        ref: str,
        intent_id: str,
        attempt: int,
        payment_method: str | None = None,
        card: dict[str, Any] | None = None,
    ) -> Intent:
        """Confirm `ref`'s intent with a method (or a card's details): attempt number
        `attempt`, counted by the caller on its own record, so a retried attempt is the
        same charge and a new one a new try. Returns the intent as it then stands; a
        declined card raises PaymentDeclined, as a 402 or as an intent sent back for
        another method."""
        if card is not None:
            payment_method = await self.create_card_method(
                card, idempotency_key=f"{ref}:card:{attempt}"
            )
        try:
            intent = await self.confirm_intent(
                intent_id, payment_method, idempotency_key=f"{ref}:confirm:{attempt}"
            )
        except ProviderRejected:
            intent = await self.retrieve_intent(intent_id)  # e.g. already confirmed by a twin
        if intent.status == "requires_payment_method":
            raise PaymentDeclined(
                "the card was declined", code=intent.error_code or "card_declined"
            )
        return intent

    async def create_card_method(self, card: dict[str, Any], *, idempotency_key: str) -> str:
        body = await self._call(
            "POST", "/v1/payment_methods", {"type": "card", "card": card}, idempotency_key
        )
        method_id: str = body["id"]
        return method_id

    async def retrieve_intent(self, intent_id: str) -> Intent:
        return _intent(await self._call("GET", f"/v1/payment_intents/{intent_id}"))

    async def cancel_intent(self, intent_id: str, *, idempotency_key: str) -> Intent:
        return _intent(
            await self._call("POST", f"/v1/payment_intents/{intent_id}/cancel", {}, idempotency_key)
        )

    async def refund(
        self,
        intent_id: str,
        amount_fen: int,
        *,
        idempotency_key: str,
        metadata: dict[str, Any] | None = None,
    ) -> Refund:
        body = await self._call(
            "POST",
            "/v1/refunds",
            {"payment_intent": intent_id, "amount": amount_fen, "metadata": metadata or {}},
            idempotency_key,
        )
        return Refund(
            id=body["id"], status=body.get("status", "succeeded"), amount_fen=int(body["amount"])
        )

    async def create_account(self, *, idempotency_key: str, metadata: dict[str, Any]) -> str:
        body = await self._call(
            "POST",
            "/v1/accounts",
            {"type": "custom", "country": "CN", "metadata": metadata},
            idempotency_key,
        )
        account_id: str = body["id"]
        return account_id

    async def transfer(
        self,
        amount_fen: int,
        destination: str,
        *,
        idempotency_key: str,
        metadata: dict[str, Any] | None = None,
    ) -> Transfer:
        body = await self._call(
            "POST",
            "/v1/transfers",
            {
                "amount": amount_fen,
                "currency": get_settings().currency.lower(),
                "destination": destination,
                "metadata": metadata or {},
            },
            idempotency_key,
        )
        return Transfer(
            id=body["id"],
            amount_fen=int(body["amount"]),
            destination=destination,
            metadata=dict(body.get("metadata") or {}),
            created=int(body.get("created") or 0),
        )

    async def list_transfers(self, page_size: int = 100) -> list[Transfer]:
        """Every transfer the provider holds (paged with `starting_after`)."""
        out: list[Transfer] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if after:
                params["starting_after"] = after
            body = await self._call("GET", "/v1/transfers", params)
            data = body.get("data") or []
            out.extend(
                Transfer(
                    id=t["id"],
                    amount_fen=int(t["amount"]),
                    destination=str(t.get("destination") or ""),
                    metadata=dict(t.get("metadata") or {}),
                    created=int(t.get("created") or 0),
                )
                for t in data
            )
            if not body.get("has_more") or not data:
                return out
            after = data[-1]["id"]

    async def aclose(self) -> None:
        if self._sessions is not None:
            await self._sessions.aclose()


def sign_webhook(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    sig = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={sig}"


def verify_webhook(
    payload: bytes,
    header: str | None,
    *,
    secret: str | None = None,
    tolerance_s: int | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a `Stripe-Signature` header (t=...,v1=...) and return the parsed event."""
    s = get_settings()
    secret = secret or s.payments_webhook_secret
    tolerance = s.payments_webhook_tolerance_s if tolerance_s is None else tolerance_s
    if not header:
        raise InvalidSignature("missing Stripe-Signature header", code="missing_signature")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        k, _, v = item.strip().partition("=")
        parts.setdefault(k, []).append(v)
    try:
        ts = int(parts["t"][0])
    except (KeyError, ValueError, IndexError) as e:
        raise InvalidSignature("malformed Stripe-Signature header") from e
    expected = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, v) for v in parts.get("v1", [])):
        raise InvalidSignature("signature does not match")
    if abs((now if now is not None else time.time()) - ts) > tolerance:
        raise InvalidSignature("signature timestamp outside the tolerance", code="stale_signature")
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise InvalidSignature("payload is not JSON", code="invalid_payload") from e
    if not isinstance(event, dict) or "id" not in event or "type" not in event:
        raise InvalidSignature("payload is not an event", code="invalid_payload")
    return event


_provider: PaymentProvider | None = None


def get_provider() -> PaymentProvider:
    global _provider
    if _provider is None:
        _provider = PaymentProvider()
    return _provider
