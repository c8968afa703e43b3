"""Small clients for the public API, used by the integration and e2e tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import date, timedelta

import httpx

from services.common.clock import local_today

CATEGORIES = ["fresh", "snacks_drinks", "household", "beauty"]


def problem_of(resp: httpx.Response) -> dict:
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.text
    body = resp.json()
    assert {"type", "title", "status", "detail", "code"} <= set(body), body
    assert body["status"] == resp.status_code
    return body


class Api:
    def __init__(self, base: str, token: str | None = None) -> None:
        self.base = base
        self.token = token
        self.http = httpx.AsyncClient(base_url=base, timeout=30)

    def _headers(self, extra: dict | None = None) -> dict:
        h = {"authorization": f"Bearer {self.token}"} if self.token else {}
        h.update(extra or {})
        return h

    async def get(self, path: str, **kw) -> httpx.Response:
        return await self.http.get(path, headers=self._headers(kw.pop("headers", None)), **kw)

    async def post(self, path: str, json=None, **kw) -> httpx.Response:
        return await self.http.post(
            path, json=json, headers=self._headers(kw.pop("headers", None)), **kw
        )

    async def put(self, path: str, json=None, **kw) -> httpx.Response:
        return await self.http.put(
            path, json=json, headers=self._headers(kw.pop("headers", None)), **kw
        )

    async def aclose(self) -> None:
        await self.http.aclose()


async def staff(base: str) -> Api:
    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.post("/auth/staff/token", data={"username": "staff", "password": "staff"})
    assert r.status_code == 200, r.text
    return Api(base, r.json()["access_token"])


async def shopper(base: str, name: str | None = None) -> Api:
    name = name or f"shopper-{uuid.uuid4().hex[:10]}"
    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.post("/auth/wechat/session", json={"code": f"dev:{name}"})
    assert r.status_code == 200, r.text
    api = Api(base, r.json()["access_token"])
    api.user = r.json()["user"]
    return api


async def bound_shopper(base: str, leader_id: int, name: str | None = None) -> Api:
    api = await shopper(base, name)
    r = await api.put("/me/leader", json={"leader_id": leader_id})
    assert r.status_code == 200, r.text
    return api


_days_handed_out: set[date] = set()


def future_day(days_ahead: int) -> date:
    """A sale day about `days_ahead` days from today, never one handed out before in this
    run: `future_day(3)` taken before midnight in Shanghai and `future_day(2)` taken after
    it are the same date, and two tests publishing one day collide."""
    day = local_today("Asia/Shanghai") + timedelta(days=days_ahead)
    while day in _days_handed_out:
        day += timedelta(days=1)
    _days_handed_out.add(day)
    return day


async def make_products(api: Api, n: int, price: int = 1500) -> list[dict]:
    tag = uuid.uuid4().hex[:8]
    out = []
    for i in range(n):
        r = await api.post(
            "/catalog/products",
            json={
                "sku": f"T-{tag}-{i}",
                "name": f"Test product {i}",
                "category": CATEGORIES[i % 4],
                "list_price_fen": price,
            },
        )
        assert r.status_code == 201, r.text
        out.append(r.json())
    return out


async def publish_day(api: Api, day: date, deals: list[dict]) -> list[dict]:
    """Add the given deals (padding to 8 with plain ones) and publish."""
    specs = list(deals)
    if len(specs) < 8:
        extra = await make_products(api, 8 - len(specs))
        specs += [
            {
                "product_id": p["id"],
                "group_price_fen": 1000,
                "stock": 100,
                "per_shopper_limit": 10,
                "group_threshold": 0,
            }
            for p in extra
        ]
    created = []
    for spec in specs:
        r = await api.post(f"/catalog/days/{day.isoformat()}/deals", json=spec)
        assert r.status_code == 201, r.text
        created.append(r.json())
    r = await api.post(f"/catalog/days/{day.isoformat()}/publish")
    assert r.status_code == 200, r.text
    return created


async def eventually(check, timeout: float = 20.0, interval: float = 0.2):
    """Poll `check` (async, returns a truthy value when done) until it passes."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


# the longest time travel of any test (tests/leaders/test_tiers.py: 29 + 1 + 31 days)
LONGEST_TIME_TRAVEL_DAYS = 61
_day_counter = iter(range(LONGEST_TIME_TRAVEL_DAYS + 40, LONGEST_TIME_TRAVEL_DAYS + 140))


def unique_day():
    """A sale day of its own for one test, far enough ahead that no other test's time
    travel reaches its cutoff: the beat closes every day whose cutoff the moved clock has
    passed, and a day a module's fixture shares between tests must stay open through all
    of them. (The counter began at 40 days while a tier test travels 61.)"""
    return future_day(next(_day_counter))


async def open_day(
    ops: Api, day: date, *, price: int, stock: int, limit: int, threshold: int = 0
) -> list[dict]:
    """A published day of 8 new products, every deal alike; returns the deals."""
    products = await make_products(ops, 8)
    deals = []
    for p in products:
        r = await ops.post(
            f"/catalog/days/{day}/deals",
            json={
                "product_id": p["id"],
                "group_price_fen": price,
                "stock": stock,
                "per_shopper_limit": limit,
                "group_threshold": threshold,
            },
        )
        assert r.status_code == 201, r.text
        deals.append(r.json())
    r = await ops.post(f"/catalog/days/{day}/publish")
    assert r.status_code == 200, r.text
    return deals
