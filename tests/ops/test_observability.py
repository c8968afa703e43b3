"""Logs and metrics of the real processes after a real order and payment flow: the
request id travels gateway -> service -> tasks, no secret reaches any log line, and each
process reports what an operator watches."""

from __future__ import annotations

import asyncio
import http.client
import json
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from services.common.clock import clock
from services.common.db import get_db
from tests.helpers import bound_shopper, eventually, future_day, publish_day, shopper, staff

pytestmark = pytest.mark.e2e

CARD_OK = "4242424242424242"
CARD_DECLINED = "4000000000000002"


def _card(number: str) -> dict:
    return {"card": {"number": number, "exp_month": 12, "exp_year": 2031, "cvc": "123"}}


def _samples(body: str, name: str) -> list:
    return [
        s
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name == name
    ]


def _log_lines(log_dir) -> dict[str, list[str]]:
    return {
        str(p.relative_to(log_dir)): p.read_text(errors="replace").splitlines()
        for p in sorted(log_dir.rglob("*.log"))
    }


def _json_lines(path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


@pytest.fixture(scope="module")
async def flow(ops_api, infra):
    """Staff publish a day; a shopper orders, pays by card (one declined), cancels another
    order; the leader tries a pickup code. Every step with a known request id."""
    base = ops_api
    ops = await staff(base)
    day = future_day(211)
    products_deals = await publish_day(ops, day, [])
    deal = products_deals[0]
    leader = await shopper(base, "leader-standard")
    alice = await bound_shopper(base, leader.user["leader_id"])
    rid = {k: f"ops-{k}-{uuid.uuid4().hex[:12]}" for k in ("place", "pay", "decline", "cancel")}

    r = await alice.post(
        "/orders",
        json={"items": [{"deal_id": deal["id"], "quantity": 1}]},
        headers={"x-request-id": rid["place"]},
    )
    assert r.status_code == 201, r.text
    assert r.headers["x-request-id"] == rid["place"]
    order = r.json()
    r = await alice.post(
        f"/orders/{order['id']}/pay", json=_card(CARD_OK), headers={"x-request-id": rid["pay"]}
    )
    assert r.status_code == 200 and r.json()["status"] == "paid", r.text
    pickup_code = r.json()["pickup_code"]

    r = await alice.post("/orders", json={"items": [{"deal_id": deal["id"], "quantity": 1}]})
    declined = r.json()
    r = await alice.post(
        f"/orders/{declined['id']}/pay",
        json=_card(CARD_DECLINED),
        headers={"x-request-id": rid["decline"]},
    )
    assert r.status_code == 402, r.text
    r = await alice.post(
        f"/orders/{declined['id']}/cancel", headers={"x-request-id": rid["cancel"]}
    )
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    # the code goes through gateway and orders even though the goods are not there yet
    r = await leader.post("/orders/pickups", json={"pickup_code": pickup_code})
    assert r.status_code < 500, r.text
    return {
        "rid": rid,
        "tokens": [ops.token, leader.token, alice.token],
        "pickup_code": pickup_code,
        "order_id": order["id"],
    }


async def test_request_id_follows_a_payment_into_the_tasks_it_causes(ops_platform, flow):
    rid = flow["rid"]
    logs = ops_platform.log_dir

    def lines_with(process: str, request_id: str) -> list[dict]:
        return [
            e for e in _json_lines(logs / f"{process}.log") if e.get("request_id") == request_id
        ]

    gateway = lines_with("gateway", rid["pay"])
    assert any(e.get("route") == "/api/v1/orders" and e.get("status") == 200 for e in gateway)
    orders = lines_with("orders", rid["pay"])
    assert any(e.get("route") == "/orders/{order_id}/pay" for e in orders), orders
    # paying emits order.paid: the task relaying it logs under the payer's request id
    await eventually(
        lambda: _async(
            any(e.get("task") == "events.dispatch" for e in lines_with("worker", rid["pay"]))
        )
    )
    # the cancellation's event is consumed by catalog in a task published by a task
    await eventually(
        lambda: _async(
            any(e.get("task") == "events.consume" for e in lines_with("worker", rid["cancel"]))
        )
    )
    assert all(e.get("process") == "worker" for e in lines_with("worker", rid["cancel"]))


async def _async(value):
    return value


async def test_no_secret_reaches_any_log_line(ops_platform, flow, infra):
    settings = infra.settings
    secrets = {
        "jwt secret": settings.jwt_secret,
        "service token": settings.service_token,
        "card number": CARD_OK,
        "declined card number": CARD_DECLINED,
        "pickup code": flow["pickup_code"],
        **{f"bearer token {i}": t for i, t in enumerate(flow["tokens"])},
    }
    logs = _log_lines(infra.supervisor.log_dir)
    assert {"gateway.log", "orders.log", "worker.log", "catalog.log"} <= set(logs)
    # the scan reads real lines: the payment request is logged, just without its secrets
    assert any(flow["rid"]["pay"] in line for line in logs["orders.log"])
    assert sum(len(lines) for lines in logs.values()) > 20
    leaks = [
        (what, name, line[:200])
        for name, lines in logs.items()
        # the payment fake stands in for the external provider, whose job is to see cards
        if not name.endswith("payments.log")
        for line in lines
        for what, secret in secrets.items()
        if secret in line
    ]
    assert leaks == []


async def test_services_and_gateway_report_metrics(ops_platform, flow):
    async with httpx.AsyncClient(timeout=10) as c:
        orders = (await c.get(f"{ops_platform.service_url('orders')}/metrics")).text
        gateway = (await c.get(f"{ops_platform.gateway_url}/metrics")).text
        settlement = (await c.get(f"{ops_platform.service_url('settlement')}/metrics")).text

    assert sum(s.value for s in _samples(orders, "groupbuy_orders_placed_total")) >= 2
    failed = _samples(orders, "groupbuy_payments_failed_total")
    assert any(s.labels["code"] == "card_declined" and s.value >= 1 for s in failed)
    requests = _samples(orders, "groupbuy_http_requests_total")
    routes = {(s.labels["method"], s.labels["route"], s.labels["status"]) for s in requests}
    assert ("POST", "/orders/{order_id}/pay", "200") in routes
    assert ("POST", "/orders/{order_id}/pay", "402") in routes
    # labels are templates: no order id ever becomes a label value
    assert not any(str(flow["order_id"]) in r for _, r, _ in routes)
    latency = _samples(orders, "groupbuy_http_request_duration_seconds_count")
    assert any(s.labels["route"] == "/orders" and s.value >= 2 for s in latency)

    gw_routes = {
        (s.labels["route"], s.labels["status"])
        for s in _samples(gateway, "groupbuy_http_requests_total")
    }
    assert ("/api/v1/orders", "201") in gw_routes
    assert ("/api/v1/orders", "402") in gw_routes
    waiting = _samples(settlement, "groupbuy_withdrawals_waiting_past_sla")
    assert [s.value for s in waiting] == [0.0]


async def test_outbox_lag_is_the_age_of_the_oldest_unpublished_event(ops_platform):
    db = get_db("settlement")
    event_id = uuid.uuid4()
    url = f"{ops_platform.service_url('settlement')}/metrics"
    # The probe must be held as a stuck relay holds a row (locked, so the sweeps skip it)
    # from the moment it is visible. Locked after its commit, the sweep (every second)
    # could publish it first. So the holder asks for the table in EXCLUSIVE mode while
    # the probe's insert is still open: it waits for that commit, and every relay that
    # comes later (FOR UPDATE needs ROW SHARE) queues behind the holder; reading the
    # lag (a plain SELECT) is not blocked.
    async with db.engine.connect() as writer, db.engine.connect() as holder:
        await writer.execute(
            text(
                "INSERT INTO settlement.outbox (id, topic, payload, created_at) "
                "VALUES (:id, 'ops.lag_probe', CAST(:p AS jsonb), :at)"
            ),
            {
                "id": event_id,
                "p": json.dumps({"id": str(event_id), "topic": "ops.lag_probe", "payload": {}}),
                "at": clock.now() - timedelta(hours=1),
            },
        )
        holder_pid = (await holder.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        lock = asyncio.create_task(
            holder.execute(text("LOCK TABLE settlement.outbox IN EXCLUSIVE MODE"))
        )

        async def holder_waits():
            async with db.session() as s:
                return (
                    await s.execute(
                        text("SELECT count(*) FROM pg_locks WHERE pid = :p AND NOT granted"),
                        {"p": holder_pid},
                    )
                ).scalar_one()

        await eventually(holder_waits)
        await writer.commit()
        await lock
        try:
            locked = (
                await holder.execute(
                    text(
                        "SELECT id FROM settlement.outbox WHERE id = :id "
                        "AND published_at IS NULL FOR UPDATE NOWAIT"
                    ),
                    {"id": event_id},
                )
            ).first()
            assert locked is not None, "a sweep published the probe before it could be held"
            async with httpx.AsyncClient(timeout=10) as c:
                body = (await c.get(url)).text
            lag = [
                s.value
                for s in _samples(body, "groupbuy_outbox_lag_seconds")
                if s.labels["schema"] == "settlement"
            ]
            assert len(lag) == 1 and lag[0] >= 3600, lag
        finally:
            await holder.rollback()

    # let go, the sweep publishes the probe and the lag falls back
    async def published():
        async with db.session() as s:
            return (
                await s.execute(
                    text("SELECT published_at FROM settlement.outbox WHERE id = :id"),
                    {"id": event_id},
                )
            ).scalar_one()

    await eventually(published)

    async with httpx.AsyncClient(timeout=10) as c:
        body = (await c.get(url)).text
    lag = [
        s.value
        for s in _samples(body, "groupbuy_outbox_lag_seconds")
        if s.labels["schema"] == "settlement"
    ]
    assert lag and lag[0] < 3600


async def test_worker_counts_tasks_that_fail_for_good(ops_platform, infra):
    from services.common.celery_app import celery

    def failures() -> float:
        try:
            body = httpx.get(ops_platform.worker_metrics_url, timeout=5).text
        except httpx.HTTPError:
            return -1.0
        return sum(
            s.value
            for s in _samples(body, "groupbuy_task_failures_total")
            if s.labels["task"] == "events.consume"
        )

    before = await eventually(lambda: _async(failures() >= 0 and (failures(), True)))
    # a consumer nobody registered: the task cannot run and is not retried
    celery.send_task(
        "events.consume",
        args=["ops:no-such:consumer", {"id": str(uuid.uuid4()), "topic": "ops.none"}],
        queue=infra.queue,
    )
    await eventually(lambda: _async(failures() >= before[0] + 1))


async def test_metrics_of_services_are_not_reachable_through_the_gateway(ops_platform):
    url = urlsplit(ops_platform.gateway_url)
    for path in (
        "/api/v1/metrics",
        "/api/v1/orders/../metrics",
        "/api/v1/orders/../../metrics",
        "/api/v1/catalog/%2e%2e/metrics",
    ):
        # http.client sends the path as written: no client-side dot-segment clean-up
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read().decode()
        finally:
            conn.close()
        assert resp.status == 404, (path, resp.status)
        assert "groupbuy_http_requests_total" not in body
