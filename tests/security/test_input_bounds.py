"""The defects the fuzzer found, pinned: ids beyond PostgreSQL INTEGER, NUL characters
and control characters in a path are 4xx problems, never a 500, and write nothing."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import text

from services.common.db import get_db
from tests.helpers import problem_of

HUGE = 2**31


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", f"/orders/{HUGE}", None),
        ("POST", f"/orders/{HUGE}/cancel", None),
        ("POST", f"/orders/after-sales/{HUGE}/approve", None),
        ("GET", f"/leaders/{HUGE}/tier-history", None),
        ("POST", "/orders", {"items": [{"deal_id": HUGE, "quantity": 1}]}),
        ("GET", "/orders?cursor=aWQ6OTk5OTk5OTk5OTk5OQ", None),  # id:9999999999999
    ],
)
async def test_ids_beyond_integer_are_422(method, path, body, gateway_url, world):
    who = world["ops"] if "after-sales" in path else world["alice"]
    r = await who.http.request(method, path, json=body, headers=who._headers())
    assert r.status_code == 422, r.text
    problem_of(r)


async def test_nul_characters_are_422_and_write_nothing(gateway_url, platform, world):
    ops = world["ops"]
    r = await ops.post(
        "/catalog/products",
        json={"sku": "NUL-1", "name": "bad\u0000name", "category": "fresh", "list_price_fen": 1},
    )
    assert r.status_code == 422 and problem_of(r)["code"] == "invalid_input", r.text
    r = await world["leader"].post("/orders/pickups", json={"pickup_code": "12\u000034"})
    assert r.status_code == 422, r.text
    r = await world["alice"].post("/leaders/join", json={"invite_code": "ab\u0000cd"})
    assert r.status_code == 422, r.text
    r = await ops.get("/orders/after-sales", params={"status": "a\x00b"})
    assert r.status_code == 422, r.text
    async with httpx.AsyncClient() as c:
        r = await c.post(
            f"{platform.service_url('catalog')}/catalog/products",
            headers=ops._headers(),
            json={"sku": "NUL-2", "name": "x\u0000", "category": "fresh", "list_price_fen": 1},
        )
    assert r.status_code == 422, r.text
    problem_of(r)
    async with get_db("catalog").session() as s:
        n = await s.execute(text("SELECT count(*) FROM catalog.products WHERE sku LIKE 'NUL-%'"))
        assert n.scalar_one() == 0


async def test_control_characters_in_a_path_are_404_at_the_gateway(gateway_url, world):
    r = await world["alice"].get("/orders/%7F%01abc")
    assert r.status_code in (404, 422), r.text
    problem_of(r)
    r = await world["ops"].get("/leaders/%ED%A0%80")
    assert r.status_code in (404, 422), r.text
    problem_of(r)


async def test_a_second_deal_for_the_same_product_and_day_is_409(world):
    """Found by the larger fuzzing budget: this was a 500."""
    ops = world["ops"]
    r = await ops.post(
        "/catalog/products",
        json={"sku": "DUP-DEAL-1", "name": "dup", "category": "fresh", "list_price_fen": 100},
    )
    assert r.status_code == 201, r.text
    deal = {
        "product_id": r.json()["id"],
        "group_price_fen": 90,
        "stock": 5,
        "per_shopper_limit": 1,
        "group_threshold": 0,
    }
    answer = await ops.post("/catalog/days/2031-02-03/deals", json=deal)
    assert answer.status_code == 201, answer.text
    r = await ops.post("/catalog/days/2031-02-03/deals", json=deal)
    assert r.status_code == 409 and problem_of(r)["code"] == "duplicate_deal", r.text


async def test_a_subnormal_coordinate_is_answered_not_a_500(gateway_url):
    """Found by the fuzzer: lat=-5e-324 underflowed PostgreSQL's float arithmetic."""
    async with httpx.AsyncClient(base_url=gateway_url) as c:
        for lat, lng in (("-5e-324", "-35.1"), ("31.2304", "5e-324"), ("1e-310", "1e-310")):
            r = await c.get("/leaders/nearby", params={"lat": lat, "lng": lng})
            assert r.status_code == 200, r.text
