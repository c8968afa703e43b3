"""The token check at the edge: a public route tolerates a bad token, any other refuses
it, and a signed-in caller is counted as themselves."""

from __future__ import annotations

import pytest

from gateway.auth import authenticate, client_key
from services.common.auth import Principal, issue_token
from services.common.errors import Unauthorized
from tests.unit.asgi_request import asgi_request


def _call(method: str, path: str, token: str | None) -> Principal | None:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return authenticate(asgi_request(method, f"/api/v1/{path}", headers=headers), path)


def test_a_public_route_ignores_a_token_that_fails():
    assert _call("GET", "catalog/today", "not-a-token") is None
    assert _call("GET", "catalog/today", issue_token(7, ["shopper"], ttl_s=-5)) is None
    assert _call("GET", "catalog/today", issue_token(7, ["shopper"])).user_id == 7


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (None, "missing_token"),
        ("not-a-token", "invalid_token"),
        (issue_token(7, ["shopper"], ttl_s=-5), "token_expired"),
    ],
)
def test_any_other_route_refuses_a_missing_or_failing_token(token, code):
    with pytest.raises(Unauthorized) as e:
        _call("GET", "orders", token)
    assert e.value.code == code
    if token is None:
        assert e.value.extra["headers"] == {"www-authenticate": "Bearer"}


def test_a_route_is_public_for_its_method_only():
    with pytest.raises(Unauthorized):
        _call("POST", "catalog/today", None)


def test_a_caller_is_counted_as_themselves_else_by_address():
    assert client_key(Principal(user_id=7), "203.0.113.7") == "user:7"
    assert client_key(None, "203.0.113.7") == "ip:203.0.113.7"
