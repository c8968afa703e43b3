"""Faults lose no event: a worker killed with SIGKILL mid-task, and a producer that is
down between its commit and its relay, still get every event applied exactly once."""

from __future__ import annotations

import os
import signal
import uuid
from datetime import UTC, datetime

from sqlalchemy import text

from services.common import events
from services.common.db import get_db
from tests.helpers import eventually

RATE = "0.10"


def picked_up_payload(order_id: int, line_ids: list[int], leader_id: int) -> dict:
    return {
        "order_id": order_id,
        "shopper_id": 1,
        "leader_id": leader_id,
        "leader_tier": "standard",
        "commission_rate": RATE,
        "sale_date": "2030-01-01",
        "picked_up_at": datetime.now(UTC).isoformat(),
        "total_fen": 1000 * len(line_ids),
        "refunded_fen": 0,
        "lines": [{"line_id": lid, "deal_id": 1, "base_fen": 1000} for lid in line_ids],
    }


def fabricated_ids(n: int) -> list[int]:
    # far above any id the sale-day tests create, and distinct per run and test
    base = 2_000_000_000 + (uuid.uuid4().int % 100_000) * 1000
    return [base + i for i in range(n)]


async def applied_counts(line_ids: list[int]) -> tuple[int, int, int]:
    """(distinct lines commissioned, commission rows, ledger transactions) of the lines."""
    async with get_db("settlement").session() as s:
        rows, distinct = (
            await s.execute(
                text(
                    "SELECT count(*), count(DISTINCT order_line_id) FROM settlement.commissions "
                    "WHERE order_line_id = ANY(:ids)"
                ),
                {"ids": line_ids},
            )
        ).one()
        txs = (
            await s.execute(
                text(
                    "SELECT count(*) FROM settlement.ledger_transactions WHERE reference = ANY(:r)"
                ),
                {"r": [f"commission:{i}" for i in line_ids]},
            )
        ).scalar_one()
    return distinct, rows, txs


async def test_a_worker_killed_mid_task_loses_no_event(platform):
    # enough that the worker is still busy when it dies, so it holds taken, unacked tasks;
    # sent as producers send them: the outbox, then the relay
    orders = fabricated_ids(120)
    async with get_db("orders").transaction() as s:
        ids = [
            await events.emit(s, "orders", "order.picked_up", picked_up_payload(o, [o], 990_001))
            for o in orders
        ]
    await events.relay_outbox(get_db("orders"))

    async def some_applied():
        return (await applied_counts(orders))[0] > 0

    await eventually(some_applied)
    # the whole process group at once: no warm shutdown, no chance to hand tasks back
    proc = platform.supervisor.procs["worker"]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    platform.start_worker()

    async def all_applied():
        counts = await applied_counts(orders)
        return counts if counts[0] == len(orders) else None

    # tasks the dead worker had recorded as taken come back after the broker's
    # visibility timeout (10 s here); one it had been handed but not yet recorded is gone
    # from the broker, and comes back because the sweep sees the worker's liveness mark
    # expire (3 s here) and replays recent events (events.workers_lost)
    await eventually(all_applied, timeout=90)
    assert await applied_counts(orders) == (len(orders), len(orders), len(orders))
    async with get_db("settlement").session() as s:
        handled = (
            await s.execute(
                text(
                    "SELECT count(*), count(DISTINCT event_id) FROM settlement.inbox "
                    "WHERE event_id = ANY(:ids)"
                ),
                {"ids": ids},
            )
        ).one()
    assert tuple(handled) == (len(orders), len(orders))


async def test_a_task_lost_with_a_killed_worker_is_replayed_and_applied_once(platform):
    """Redis hands a task to a worker before the worker records it as taken: killed in
    between, the task is gone from the broker for good. The worker's liveness mark then
    expires instead of being removed, and the sweep sends recent events again."""
    (order,) = fabricated_ids(1)
    lines = [order, order + 1]
    async with get_db("orders").transaction() as s:
        eid = await events.emit(
            s, "orders", "order.picked_up", picked_up_payload(order, lines, 990_003)
        )
        # what such a kill leaves: the event published, the task nowhere
        await s.execute(
            text("UPDATE orders.outbox SET published_at = now() WHERE id = :e"), {"e": eid}
        )
    proc = platform.supervisor.procs["worker"]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    platform.start_worker()

    async def applied():
        counts = await applied_counts(lines)
        return counts if counts[0] == len(lines) else None

    await eventually(applied, timeout=60)
    assert await applied_counts(lines) == (2, 2, 2)


async def test_an_event_committed_while_the_producer_is_down_is_swept_and_applied_once(
    platform,
):
    (order,) = fabricated_ids(1)
    lines = [order, order + 1]
    # the producer committed its change and died before its after-commit relay ran
    platform.supervisor.stop("orders")
    try:
        async with get_db("orders").transaction() as s:
            eid = await events.emit(
                s, "orders", "order.picked_up", picked_up_payload(order, lines, 990_002)
            )

        async def swept_and_applied():
            counts = await applied_counts(lines)
            return counts if counts[0] == len(lines) else None

        await eventually(swept_and_applied)
    finally:
        platform.start_service("orders")
    assert await applied_counts(lines) == (2, 2, 2)
    async with get_db("orders").session() as s:
        published = (
            await s.execute(
                text("SELECT published_at IS NOT NULL FROM orders.outbox WHERE id = :e"),
                {"e": eid},
            )
        ).scalar_one()
    assert published


async def test_only_a_worker_whose_mark_expired_counts_as_lost_and_only_once(platform):
    import asyncio

    queue = f"probe-{uuid.uuid4().hex[:8]}"  # not the platform's: its sweep stays out
    events.worker_alive("stopped", 0.3, queue)
    events.worker_alive("killed", 0.3, queue)
    events.worker_alive("alive", 30, queue)
    events.worker_stopped("stopped", queue)  # a clean shutdown hands its tasks back
    await asyncio.sleep(0.5)
    assert events.workers_lost(queue) == ["killed"]
    assert events.workers_lost(queue) == []  # reported once: one replay
    events.worker_stopped("alive", queue)
