"""Prometheus metrics: request rate and latency per route template, business counters,
the outbox lag and the worker's task failures.

Each HTTP process serves its own registry at `/metrics`. The Celery worker runs tasks in
forked children, so it uses prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR
set before start) and serves the merged view from the parent on WORKER_METRICS_PORT.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # multiprocess mode opens its value files on import: the directory must exist first
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

from prometheus_client import (  # noqa: E402
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import text
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .clock import clock

if TYPE_CHECKING:
    from .db import Database

log = structlog.get_logger()

HTTP_REQUESTS = Counter(
    "groupbuy_http_requests_total",
    "HTTP requests answered, per route template and status",
    ["process", "method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "groupbuy_http_request_duration_seconds",
    "Time to answer an HTTP request, per route template",
    ["process", "method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
ORDERS_PLACED = Counter("groupbuy_orders_placed_total", "Orders placed by shoppers")
PAYMENTS_FAILED = Counter(
    "groupbuy_payments_failed_total", "Payment attempts the provider refused", ["code"]
)
OUTBOX_LAG = Gauge(
    "groupbuy_outbox_lag_seconds",
    "Age of the oldest event not yet relayed to the broker (0 when none waits)",
    ["schema"],
    multiprocess_mode="max",
)
TASK_FAILURES = Counter(
    "groupbuy_task_failures_total", "Celery tasks that failed for good", ["task"]
)
TASK_RETRIES = Counter("groupbuy_task_retries_total", "Celery task retries", ["task"])
# set by the settlement service at scrape time
WITHDRAWALS_PAST_SLA = Gauge(
    "groupbuy_withdrawals_waiting_past_sla",
    "Withdrawal requests still waiting after the review SLA",
    multiprocess_mode="max",
)


def route_template(scope: Scope) -> str:
    """The matched route's template (bounded cardinality); never the raw path."""
    route = scope.get("route")
    return getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"


class MetricsMiddleware:
    """Counts and times every request and writes one access line carrying the request id.

    Pure ASGI and a handful of dictionary lookups, so it costs microseconds per request.
    """

    def __init__(
        self, app: ASGIApp, process: str, label: Callable[[Scope], str] = route_template
    ) -> None:
        self.app = app
        self.process = process
        self.label = label

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ("/metrics", "/healthz", "/readyz"):
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500
        rid: bytes | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status, rid
            if message["type"] == "http.response.start":
                status = message["status"]
                for k, v in message.get("headers", ()):
                    if k.lower() == b"x-request-id":
                        rid = v
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = self.label(scope)
            method = scope["method"]
            HTTP_REQUESTS.labels(self.process, method, route, str(status)).inc()
            HTTP_LATENCY.labels(self.process, method, route).observe(elapsed)
            # the template, not the raw path: paths may carry ids a log must not hold
            extra = {"request_id": rid.decode(errors="replace")[:100]} if rid else {}
            log.info(
                "request",
                **extra,
                method=method,
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 1),
            )


def metrics_response(registry: CollectorRegistry | None = None) -> Response:
    data = generate_latest(registry) if registry is not None else generate_latest()
    return Response(data, media_type=CONTENT_TYPE_LATEST)


async def refresh_outbox_lag(db: Database) -> None:
    """Measured at scrape time: one indexed query, only as often as Prometheus asks."""
    try:
        async with db.session() as s:
            oldest = (
                await s.execute(
                    text(
                        f"SELECT min(created_at) FROM {db.schema}.outbox WHERE published_at IS NULL"
                    )
                )
            ).scalar_one()
    except Exception:
        log.warning("outbox_lag_unmeasured", schema=db.schema, exc_info=True)
        return
    lag = 0.0 if oldest is None else max(0.0, (clock.now() - oldest).total_seconds())
    OUTBOX_LAG.labels(db.schema).set(lag)


def start_worker_metrics_server(port: int) -> None:
    """Serve the worker children's merged counters from the parent process."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        log.warning("worker_metrics_disabled", reason="PROMETHEUS_MULTIPROC_DIR is not set")
        return
    registry = CollectorRegistry()
    # prometheus_client leaves the multiprocess helpers unannotated
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    start_http_server(port, registry=registry)


def mark_worker_child_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]  # as above
