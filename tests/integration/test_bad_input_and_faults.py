"""Bad input gets a clear problem+json 4xx and writes nothing; idempotency keys replay;
a stopped service is a fast 503 at the gateway."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import text

from services.common.db import get_db
from services.common.settings import get_settings
from tests.helpers import bound_shopper, future_day, open_day, problem_of, shopper, staff


async def _order_count() -> int:
    async with get_db("orders").session() as s:
        return (await s.execute(text("SELECT count(*) FROM orders.orders"))).scalar_one()


@pytest.fixture(scope="module")
async def day_with_deal(gateway_url):
    from services.platform.seed import seed_demo

    await seed_demo()
    ops = await staff(gateway_url)
    day = future_day(5)
    deals = await open_day(ops, day, price=700, stock=20, limit=3)
    leader = await shopper(gateway_url, "leader-standard")
    yield {"ops": ops, "deals": deals, "leader_id": leader.user["leader_id"], "day": day}
    await ops.aclose()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"items": [{"deal_id": 1, "quantity": -1}]}, "invalid_input"),
        ({"items": [{"deal_id": 1, "quantity": 0}]}, "invalid_input"),
        ({"items": [{"deal_id": "one", "quantity": 1}]}, "invalid_input"),
        ({"items": []}, "invalid_input"),
        ({"nothing": True}, "invalid_input"),
    ],
)
async def test_malformed_orders_are_422_and_write_nothing(gateway_url, day_with_deal, body, code):
    alice = await bound_shopper(gateway_url, day_with_deal["leader_id"])
    before = await _order_count()
    r = await alice.post("/orders", json=body)
    assert r.status_code == 422, r.text
    assert problem_of(r)["code"] == code
    assert await _order_count() == before


async def test_unknown_deal_is_404_and_holds_no_stock(gateway_url, day_with_deal):
    alice = await bound_shopper(gateway_url, day_with_deal["leader_id"])
    real = day_with_deal["deals"][0]
    before = await _order_count()
    r = await alice.post(
        "/orders",
        json={
            "items": [
                {"deal_id": real["id"], "quantity": 1},
                {"deal_id": 99_999_999, "quantity": 1},
            ]
        },
    )
    assert r.status_code == 404, r.text
    assert problem_of(r)["code"] == "deal_not_found"
    assert await _order_count() == before
    r = await alice.get(f"/catalog/days/{day_with_deal['day']}")
    assert next(d for d in r.json()["deals"] if d["id"] == real["id"])["ordered"] == 0


async def test_per_shopper_limit_holds_across_orders(gateway_url, day_with_deal):
    alice = await bound_shopper(gateway_url, day_with_deal["leader_id"])
    deal = day_with_deal["deals"][1]
    r = await alice.post("/orders", json={"items": [{"deal_id": deal["id"], "quantity": 2}]})
    assert r.status_code == 201, r.text
    r = await alice.post("/orders", json={"items": [{"deal_id": deal["id"], "quantity": 2}]})
    assert r.status_code == 422 and problem_of(r)["code"] == "per_shopper_limit"
    r = await alice.post("/orders", json={"items": [{"deal_id": deal["id"], "quantity": 1}]})
    assert r.status_code == 201  # exactly the limit is fine


async def test_shopper_without_a_leader_is_told_to_bind(gateway_url, day_with_deal):
    loner = await shopper(gateway_url)
    r = await loner.post(
        "/orders", json={"items": [{"deal_id": day_with_deal["deals"][0]["id"], "quantity": 1}]}
    )
    assert r.status_code == 404 and problem_of(r)["code"] == "no_bound_leader"


async def test_oversized_body_is_413(gateway_url, day_with_deal):
    alice = await bound_shopper(gateway_url, day_with_deal["leader_id"])
    r = await alice.post(
        "/orders",
        content=b'{"items": [' + b" " * 400_000 + b"]}",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and problem_of(r)["code"] == "body_too_large"


async def test_bad_catalog_input(gateway_url, day_with_deal):
    ops = day_with_deal["ops"]
    r = await ops.post(
        "/catalog/products",
        json={"sku": "X-1", "name": "x", "category": "toys", "list_price_fen": 100},
    )
    assert r.status_code == 422 and problem_of(r)["code"] == "invalid_input"
    r = await ops.post(
        "/catalog/products",
        json={"sku": "X-2", "name": "x", "category": "fresh", "list_price_fen": 1.5},
    )
    assert r.status_code == 422, r.text
    r = await ops.post(
        f"/catalog/days/{day_with_deal['day']}/deals",
        json={"product_id": 1, "group_price_fen": 100, "stock": 5, "per_shopper_limit": 1},
    )
    assert r.status_code == 409 and problem_of(r)["code"] == "sale_day_read_only"
    r = await ops.get("/catalog/days/not-a-date")
    assert r.status_code == 422, r.text


async def test_roles_and_tokens(gateway_url, day_with_deal):
    async with httpx.AsyncClient(base_url=gateway_url) as anon:
        r = await anon.get("/orders")
        assert r.status_code == 401 and problem_of(r)["code"] == "missing_token"
        r = await anon.get("/orders", headers={"authorization": "Bearer not.a.jwt"})
        assert r.status_code == 401 and problem_of(r)["code"] == "invalid_token"
        r = await anon.get("/internal/shoppers/1/leader")
        assert r.status_code == 404, r.text
        r = await anon.post("/auth/staff/token", data={"username": "staff", "password": "nope"})
        assert r.status_code == 401 and problem_of(r)["code"] == "invalid_credentials"
    alice = await bound_shopper(gateway_url, day_with_deal["leader_id"])
    r = await alice.post(
        "/catalog/products",
        json={"sku": "Y", "name": "y", "category": "fresh", "list_price_fen": 100},
    )
    assert r.status_code == 403 and problem_of(r)["code"] == "wrong_role"


async def test_idempotency_key_replays_and_refuses_a_different_body(gateway_url, day_with_deal):
    alice = await bound_shopper(gateway_url, day_with_deal["leader_id"])
    deal = day_with_deal["deals"][2]
    key = {"idempotency-key": "order-attempt-1"}
    first = await alice.post(
        "/orders", json={"items": [{"deal_id": deal["id"], "quantity": 1}]}, headers=key
    )
    again = await alice.post(
        "/orders", json={"items": [{"deal_id": deal["id"], "quantity": 1}]}, headers=key
    )
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    other = await alice.post(
        "/orders", json={"items": [{"deal_id": deal["id"], "quantity": 2}]}, headers=key
    )
    assert other.status_code == 409 and problem_of(other)["code"] == "idempotency_key_reused"
    r = await alice.get(f"/catalog/days/{day_with_deal['day']}")
    assert next(d for d in r.json()["deals"] if d["id"] == deal["id"])["ordered"] == 1


async def test_a_stopped_service_is_a_fast_503(gateway_url, platform, day_with_deal):
    leader = await shopper(gateway_url, "leader-standard")
    platform.supervisor.stop("settlement")
    try:
        # the gateway gives up on connect (refused at once, or PEER_CONNECT_TIMEOUT_S): it
        # never waits for the read timeout, so a client that gives up well before that
        # still gets the 503. (A wall-clock budget of 1 s, as here before, can fail on a
        # machine whose two cores are busy with other work, with no defect behind it.)
        patience = get_settings().peer_read_timeout_s / 2
        started = time.monotonic()
        try:
            r = await leader.get("/settlement/me/balance", timeout=patience)
        except httpx.TimeoutException:
            raise AssertionError(f"no answer within {patience} s: the gateway hung") from None
        elapsed = time.monotonic() - started
        assert r.status_code == 503, f"{r.status_code} after {elapsed:.2f} s: {r.text}"
        assert problem_of(r)["code"] == "service_unavailable"
        async with httpx.AsyncClient() as c:
            ready = await c.get(f"{platform.gateway_url}/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["settlement"] == "unreachable"
    finally:
        platform.start_service("settlement")
    r = await leader.get("/settlement/me/balance")
    assert r.status_code == 200, r.text
