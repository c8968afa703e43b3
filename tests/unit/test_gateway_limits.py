"""What each request to the gateway is counted against, and that the first limit to
refuse stops the count."""

from __future__ import annotations

import pytest

from gateway.limits import Limits, login_account
from services.common.errors import RateLimited
from services.common.settings import Settings
from tests.unit.asgi_request import asgi_request

IP = "203.0.113.7"


class _Counter:
    def __init__(self, wait: float = 0.0) -> None:
        self.wait = wait
        self.keys: list[str] = []

    async def take(self, key: str) -> float:
        self.keys.append(key)
        return self.wait


def _limits(per_client_wait: float = 0.0) -> Limits:
    return Limits(per_client=_Counter(per_client_wait), sign_in=_Counter(), pickup=_Counter())


def _taken(limits: Limits) -> tuple[list[str], list[str], list[str]]:
    return limits.per_client.keys, limits.sign_in.keys, limits.pickup.keys  # type: ignore[attr-defined]


async def _check(limits: Limits, path: str, client_key: str, body: bytes = b"") -> None:
    request = asgi_request("POST", f"/api/v1/{path}", body=body, client=IP)
    await limits.check(request, path, client_key, IP)


async def test_a_staff_sign_in_is_counted_per_client_per_address_and_per_account():
    limits = _limits()
    await _check(limits, "auth/staff/token", f"ip:{IP}", b"username=victim&password=x")
    assert _taken(limits) == ([f"ip:{IP}"], [f"ip:{IP}", "account:staff:victim"], [])


async def test_a_wechat_sign_in_with_a_token_is_still_counted_by_address_and_code():
    limits = _limits()
    await _check(limits, "auth/wechat/session", "user:7", b'{"code": "dev:alice"}')
    assert _taken(limits) == (["user:7"], [f"ip:{IP}", "account:wechat:dev:alice"], [])


async def test_a_pickup_is_counted_per_leader_and_per_address():
    limits = _limits()
    await _check(limits, "orders/pickups", "user:7", b'{"pickup_code": "000000000001"}')
    assert _taken(limits) == (["user:7"], [], ["user:7", f"ip:{IP}"])


async def test_any_other_request_is_counted_per_client_only():
    limits = _limits()
    await _check(limits, "orders", "user:7", b'{"username": "x"}')
    await _check(limits, "orders/pickups/1", "user:7")
    assert _taken(limits) == (["user:7", "user:7"], [], [])


@pytest.mark.parametrize(("wait", "retry_after"), [(0.2, "1"), (2.3, "3")])
async def test_the_first_refusal_stops_the_count_and_says_when_to_retry(wait, retry_after):
    limits = _limits(per_client_wait=wait)
    with pytest.raises(RateLimited) as e:
        await _check(limits, "auth/staff/token", f"ip:{IP}", b"username=victim")
    assert e.value.extra["headers"] == {"retry-after": retry_after}
    # a client already refused does not use up the account's sign-in attempts
    assert _taken(limits) == ([f"ip:{IP}"], [], [])


def test_each_setting_sizes_its_own_limit():
    settings = Settings(
        rate_limit_per_minute=1000, auth_rate_limit_per_minute=20, pickup_rate_limit_per_minute=7
    )
    limits = Limits.from_settings(settings, limiter=lambda name, per_minute: (name, per_minute))
    assert (limits.per_client, limits.sign_in, limits.pickup) == (
        ("per_client", 1000),
        ("sign_in", 20),
        ("pickup", 7),
    )


@pytest.mark.parametrize(
    ("path", "body", "account"),
    [
        ("auth/staff/token", b"username=" + b"u" * 150 + b"&password=x", "staff:" + "u" * 100),
        ("auth/staff/token", b"password=x", None),
        ("auth/wechat/session", b'{"code": "' + b"c" * 250 + b'"}', "wechat:" + "c" * 200),
        ("auth/wechat/session", b'{"code": 5}', None),
        ("auth/wechat/session", b"[1]", None),
        ("auth/wechat/session", b"{not json", None),
        ("auth/refresh", b'{"code": "dev:alice"}', None),
    ],
)
def test_the_account_of_a_sign_in(path, body, account):
    assert login_account(path, body) == account
