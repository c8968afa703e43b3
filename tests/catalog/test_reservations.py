"""The catalog's reservation as orders uses it (over HTTP, with the service token): a
retry of the same order id is answered as the first time and holds nothing more, even
when the retries race; an order holds stock for all of its deals or for none; the
per-shopper limit counts across orders."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from sqlalchemy import text

from services.common.db import get_db
from services.common.http import PeerError, ServiceClient
from tests.helpers import open_day, staff, unique_day

catalog = ServiceClient("catalog")
# far above the sequence's ids, within the column's int4, apart from earlier runs'
_ids = itertools.count(1_900_000_000 + int(time.time()) % 10**6 * 100)


def new_order_id() -> int:
    return next(_ids)


async def _held(deal_id: int) -> tuple[int, int]:
    """(units reserved on the deal, units in held reservations) as stored."""
    async with get_db("catalog").session() as s:
        row = (
            await s.execute(
                text(
                    "SELECT d.reserved, COALESCE((SELECT sum(quantity) FROM catalog.reservations "
                    "WHERE deal_id = d.id AND status = 'held'), 0) FROM catalog.deals d "
                    "WHERE d.id = :d"
                ),
                {"d": deal_id},
            )
        ).one()
    return row[0], row[1]


async def _reserve(order_id: int, shopper_id: int, items: list[tuple[int, int]]) -> dict:
    return await catalog.post(
        "/internal/reservations",
        json={
            "order_id": order_id,
            "shopper_id": shopper_id,
            "items": [{"deal_id": d, "quantity": q} for d, q in items],
        },
    )


async def test_a_retried_reservation_is_answered_as_the_first_and_holds_once(gateway_url):
    ops = await staff(gateway_url)
    deals = await open_day(ops, unique_day(), price=700, stock=20, limit=4)
    a, b = deals[0]["id"], deals[1]["id"]
    order = new_order_id()

    first = await _reserve(order, 41, [(b, 1), (a, 2)])
    assert [(ln["deal_id"], ln["quantity"]) for ln in first["lines"]] == [(a, 2), (b, 1)]
    again = await _reserve(order, 41, [(b, 1), (a, 2)])
    assert again == first
    # three retries at once: every one gets the first answer, nothing more is held
    racing = await asyncio.gather(*[_reserve(order, 41, [(b, 1), (a, 2)]) for _ in range(3)])
    assert racing == [first] * 3
    assert await _held(a) == (2, 2) and await _held(b) == (1, 1)

    # the shopper's running quantity counted the order once: 2 more of `a` fit the limit
    last = new_order_id()
    filled = await _reserve(last, 41, [(a, 2)])
    with pytest.raises(PeerError) as refused:
        await _reserve(new_order_id(), 41, [(a, 1)])
    assert (refused.value.status, refused.value.code) == (422, "per_shopper_limit")
    # the order that took the shopper's whole limit, asked again: its answer, not a refusal
    assert await _reserve(last, 41, [(a, 2)]) == filled
    assert await _held(a) == (4, 4)


async def test_a_retry_of_the_order_that_took_the_last_units_gets_them(gateway_url):
    ops = await staff(gateway_url)
    deals = await open_day(ops, unique_day(), price=700, stock=3, limit=5)
    a = deals[0]["id"]
    order = new_order_id()
    first = await _reserve(order, 61, [(a, 3)])
    assert await _reserve(order, 61, [(a, 3)]) == first  # not out_of_stock
    with pytest.raises(PeerError) as refused:
        await _reserve(new_order_id(), 62, [(a, 1)])
    assert refused.value.code == "out_of_stock"
    assert await _held(a) == (3, 3)


async def test_an_order_holds_all_of_its_deals_or_none(gateway_url):
    ops = await staff(gateway_url)
    deals = await open_day(ops, unique_day(), price=700, stock=3, limit=5)
    a, b = deals[0]["id"], deals[1]["id"]
    await _reserve(new_order_id(), 51, [(b, 3)])  # b sold out

    with pytest.raises(PeerError) as refused:
        await _reserve(new_order_id(), 52, [(a, 2), (b, 1)])
    assert (refused.value.status, refused.value.code) == (409, "out_of_stock")
    assert await _held(a) == (0, 0)  # a's units were not kept for the refused order

    # over the limit on the second deal: the first deal's units and quantity roll back
    with pytest.raises(PeerError) as refused:
        await _reserve(new_order_id(), 53, [(a, 1), (deals[2]["id"], 6)])
    assert refused.value.code in ("per_shopper_limit", "out_of_stock")
    assert await _held(a) == (0, 0)
    order = await _reserve(new_order_id(), 53, [(a, 3)])  # the shopper's full quantity is free
    assert order["lines"][0]["quantity"] == 3
