"""The payment provider fake used by `make run` and the tests: localstripe, extended.

localstripe is a real, stateful Stripe-compatible server. What it lacks and Stripe
documents, this module adds, and `tests/unit/test_payments_fake.py` checks:
* `Idempotency-Key`: a repeated key replays the first response; the same key with
  other parameters is refused (Stripe answers 400 `idempotency_error`).
* Generic-decline test cards (4000000000000002, ...) are declined when charged.
* `POST /v1/payment_intents/{id}/confirm` with a `payment_method` (also after a decline).
* Connected accounts (`/v1/accounts`) and transfers (`/v1/transfers`), with a test
  account whose transfers fail (metadata[test_mode]=transfers_fail).
* The store is kept in memory only (localstripe pickles its whole store to /tmp on
  every write, which is slow and shared between unrelated runs), and indexed by kind:
  localstripe lists every refund in the store to sum one charge's, and scanned the
  whole store to do it, so each payment cost more than the last (a third of the
  machine's CPU after a few thousand orders in `make bench`).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from typing import cast

from aiohttp import web
from localstripe import resources, server
from localstripe.errors import UserError
from localstripe.resources import PaymentIntent, PaymentMethod, StripeObject, store
from localstripe.webhooks import register_webhook

DECLINED_CARDS = {
    "4000000000000002",
    "4000000000009995",
    "4000000000009987",
    "4000000000009979",
    "4000000000000069",
    "4000000000000127",
    "4000000000000119",
    "4000000000000341",
}

_by_kind: dict[str, dict[str, object]] = {}


class _IndexedStore(type(store)):  # type: ignore[misc]
    """The same dict, with each kind's entries (`refund:...`) also kept apart."""

    def __setitem__(self, key, value):
        dict.__setitem__(self, key, value)
        _by_kind.setdefault(key.split(":", 1)[0], {})[key] = value

    def __delitem__(self, key):
        dict.__delitem__(self, key)
        _by_kind.get(key.split(":", 1)[0], {}).pop(key, None)

    def clear(self):
        dict.clear(self)
        _by_kind.clear()

    def dump_to_disk(self):
        pass

    def try_load_from_disk(self):
        pass


store.__class__ = _IndexedStore
for _key, _value in list(store.items()):
    _by_kind.setdefault(_key.split(":", 1)[0], {})[_key] = _value


def _list_all_of_kind(cls, url, limit=None, starting_after=None, **kwargs):
    if kwargs:
        raise UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
    li = resources.List(url, limit=limit, starting_after=starting_after)
    li._list = list(_by_kind.get(cls.object, {}).values())
    return li


StripeObject._api_list_all = classmethod(_list_all_of_kind)

_original_charging_is_declined = PaymentMethod._charging_is_declined


def _charging_is_declined(self) -> bool:
    if self.type == "card" and getattr(self, "_card_number", None) in DECLINED_CARDS:
        return True
    return _original_charging_is_declined(self)


PaymentMethod._charging_is_declined = _charging_is_declined


def _confirm_with_method(id=None, payment_method=None, **kwargs):
    if kwargs:
        raise UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
    if not isinstance(id, str) or not id.startswith("pi_"):
        raise UserError(400, "Bad request")
    intent = PaymentIntent._api_retrieve(id)
    if payment_method is not None:
        PaymentMethod._api_retrieve(payment_method)  # 404 for an unknown method
        if intent.status not in ("requires_payment_method", "requires_confirmation"):
            raise UserError(
                400,
                "This PaymentIntent's status does not allow confirmation",
                {"code": "payment_intent_unexpected_state"},
            )
        intent.payment_method = payment_method
        intent.latest_charge = None
    if intent.status != "requires_confirmation":
        raise UserError(
            400,
            "This PaymentIntent's status does not allow confirmation",
            {"code": "payment_intent_unexpected_state"},
        )
    intent._confirm(on_failure_now=intent._report_failure)
    return intent


class Account(StripeObject):
    object = "account"
    _id_prefix = "acct_"

    def __init__(self, type=None, country=None, metadata=None, email=None, **kwargs):
        if kwargs:
            raise UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
        super().__init__()
        self.type = type or "custom"
        self.country = country or "CN"
        self.email = email
        self.metadata = metadata or {}
        self.payouts_enabled = True
        self.charges_enabled = False


class Transfer(StripeObject):
    object = "transfer"
    _id_prefix = "tr_"

    def __init__(
        self,
        amount=None,
        currency=None,
        destination=None,
        metadata=None,
        transfer_group=None,
        description=None,
        **kwargs,
    ):
        if kwargs:
            raise UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
        amount = resources.try_convert_to_int(amount)
        if not isinstance(amount, int) or amount <= 0 or not currency:
            raise UserError(400, "Bad request")
        if not isinstance(destination, str) or not destination.startswith("acct_"):
            raise UserError(400, "Bad request")
        account = Account._api_retrieve(destination)
        if (account.metadata or {}).get("test_mode") == "transfers_fail":
            raise UserError(
                400,
                "The destination account cannot receive transfers.",
                {"code": "account_invalid"},
            )
        super().__init__()
        self.amount = amount
        self.currency = currency
        self.destination = destination
        self.metadata = metadata or {}
        self.transfer_group = transfer_group
        self.description = description
        self.reversed = False


_replays: dict[str, tuple[str, int, bytes]] = {}


@web.middleware
async def idempotency_middleware(request: web.Request, handler):
    key = request.headers.get("Idempotency-Key")
    if request.method != "POST" or not key:
        return await handler(request)
    body = await request.read()
    fingerprint = hashlib.sha256(request.path.encode() + b"\n" + body).hexdigest()
    seen = _replays.get(key)
    if seen is not None:
        if seen[0] != fingerprint:
            return web.json_response(
                {
                    "error": {
                        "type": "idempotency_error",
                        "message": "Keys for idempotent requests can only be used with the same "
                        "parameters they were first used with.",
                    }
                },
                status=400,
            )
        return web.Response(
            body=seen[2],
            status=seen[1],
            content_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )
    response = await handler(request)
    if response.status < 500 and isinstance(response, web.Response) and response.body is not None:
        # our handlers and localstripe's answer with JSON bytes, never a Payload
        _replays[key] = (fingerprint, response.status, bytes(cast(bytes, response.body)))
    return response


def build_app() -> web.Application:
    app = web.Application(
        middlewares=[server.error_middleware, idempotency_middleware, server.auth_middleware]
    )
    app.on_response_prepare.append(server.add_cors_headers)
    # Our confirm (with payment_method) must win over localstripe's, which refuses it.
    app.router.add_route(
        "POST", "/v1/payment_intents/{id}/confirm", server.api_extra(_confirm_with_method, "")
    )
    for cls in (Account, Transfer):
        base = "/v1/" + cls.object + "s"
        app.router.add_route("POST", base, server.api_create(cls, base))
        app.router.add_route("GET", base + "/{id}", server.api_retrieve(cls, base))
        app.router.add_route("GET", base, server.api_list_all(cls, base))
    # aiohttp still runs a plain function as a handler; its types say a coroutine
    app.router.add_get(
        "/_health",
        lambda _: web.json_response({"ok": True, "t": time.time()}),  # type: ignore[arg-type,return-value]
    )
    for route in server.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if not path or (route.method == "POST" and path == "/v1/payment_intents/{id}/confirm"):
            continue
        app.router.add_route(route.method, path, route.handler)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Stripe-compatible payment fake")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument("--webhook-url", default=None)
    parser.add_argument("--webhook-secret", default=None)
    args = parser.parse_args()
    app = build_app()
    if args.webhook_url and args.webhook_secret:
        register_webhook("groupbuy", args.webhook_url, args.webhook_secret, None)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
