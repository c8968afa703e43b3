"""Login and pickup-code redemption are limited per client and per account: a second
gateway with low limits (the shared one runs with limits raised for the rest of the
suite) in front of the same services."""

from __future__ import annotations

import sys

import httpx
import pytest

from services.common.auth import issue_token
from services.platform import devstack
from tests.helpers import problem_of

LIMIT = 3


@pytest.fixture(scope="module")
def limited_gateway(platform):
    port = devstack.free_port()
    env = {
        **platform.env,
        "AUTH_RATE_LIMIT_PER_MINUTE": str(LIMIT),
        "PICKUP_RATE_LIMIT_PER_MINUTE": str(LIMIT),
    }
    name = "gateway-rate-limited"
    platform.supervisor.start(
        name,
        [sys.executable, "-m", "uvicorn", "gateway.app:app", "--host", "127.0.0.1"]
        + ["--port", str(port), "--no-access-log", "--log-level", "warning"],
        env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        devstack.wait_http(
            f"{url}/healthz", alive=lambda: platform.supervisor.procs[name].poll() is None
        )
        yield f"{url}/api/v1"
    finally:
        platform.supervisor.stop(name)


def _from(ip: str) -> dict:
    # the gateway takes the client address from a trusted local proxy's X-Forwarded-For
    return {"x-forwarded-for": ip}


def _assert_limited(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert problem_of(r)["code"] == "rate_limited"
    assert int(r.headers["retry-after"]) >= 1


async def test_login_is_limited_per_client(limited_gateway):
    async with httpx.AsyncClient(base_url=limited_gateway) as c:
        for i in range(LIMIT):
            r = await c.post(
                "/auth/staff/token",
                data={"username": f"guess-{i}", "password": "x"},
                headers=_from("203.0.113.10"),
            )
            assert r.status_code == 401, r.text
        # the right password does not get through from that client any more...
        r = await c.post(
            "/auth/staff/token",
            data={"username": "staff", "password": "staff"},
            headers=_from("203.0.113.10"),
        )
        _assert_limited(r)
        # ...while another client is unaffected
        r = await c.post(
            "/auth/staff/token",
            data={"username": "staff", "password": "staff"},
            headers=_from("203.0.113.11"),
        )
        assert r.status_code == 200, r.text


async def test_login_is_limited_per_account_across_clients(limited_gateway):
    async with httpx.AsyncClient(base_url=limited_gateway) as c:
        for i in range(LIMIT):
            r = await c.post(
                "/auth/staff/token",
                data={"username": "victim", "password": f"guess-{i}"},
                headers=_from(f"198.51.100.{i + 1}"),
            )
            assert r.status_code == 401, r.text
        r = await c.post(
            "/auth/staff/token",
            data={"username": "victim", "password": "guess-x"},
            headers=_from("198.51.100.99"),
        )
        _assert_limited(r)
        r = await c.post(
            "/auth/wechat/session", json={"code": "dev:rate-probe"}, headers=_from("198.51.100.98")
        )
        assert r.status_code == 200, r.text


def _leader_token(n: int) -> str:
    return issue_token(900_000 + n, ["shopper", "leader"], leader_id=900_000 + n)


async def test_pickup_redemption_is_limited_per_leader_across_clients(limited_gateway):
    token = _leader_token(1)
    async with httpx.AsyncClient(base_url=limited_gateway) as c:
        for i in range(LIMIT):
            r = await c.post(
                "/orders/pickups",
                json={"pickup_code": f"{i:012d}"},
                headers={"authorization": f"Bearer {token}", **_from(f"192.0.2.{i + 1}")},
            )
            assert r.status_code != 429, r.text
        r = await c.post(
            "/orders/pickups",
            json={"pickup_code": "000000000099"},
            headers={"authorization": f"Bearer {token}", **_from("192.0.2.99")},
        )
        _assert_limited(r)


async def test_pickup_redemption_is_limited_per_client_across_leaders(limited_gateway):
    async with httpx.AsyncClient(base_url=limited_gateway) as c:
        for i in range(LIMIT):
            r = await c.post(
                "/orders/pickups",
                json={"pickup_code": f"{i:012d}"},
                headers={"authorization": f"Bearer {_leader_token(10 + i)}", **_from("192.0.2.50")},
            )
            assert r.status_code != 429, r.text
        r = await c.post(
            "/orders/pickups",
            json={"pickup_code": "000000000099"},
            headers={"authorization": f"Bearer {_leader_token(20)}", **_from("192.0.2.50")},
        )
        _assert_limited(r)
        # a different leader somewhere else is still served
        r = await c.post(
            "/orders/pickups",
            json={"pickup_code": "000000000099"},
            headers={"authorization": f"Bearer {_leader_token(21)}", **_from("192.0.2.51")},
        )
        assert r.status_code != 429
