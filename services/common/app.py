"""The FastAPI app factory every service uses: errors, request ids, size limits,
idempotency, health and readiness, all in one place."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI
from sqlalchemy import text
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .db import get_db
from .errors import install_error_handlers, problem
from .idempotency import IdempotencyMiddleware
from .logging import configure_logging
from .metrics import MetricsMiddleware, metrics_response, refresh_outbox_lag
from .settings import get_settings

log = structlog.get_logger()


class RequestContextMiddleware:
    """Takes the gateway's X-Request-ID (or makes one), binds it to every log line."""

    def __init__(self, app: ASGIApp, process: str) -> None:
        self.app = app
        self.process = process

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = None
        for k, v in scope["headers"]:
            if k == b"x-request-id":
                rid = v.decode()[:100]
        rid = rid or uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope["headers"]:
            if k == b"content-length" and v.isdigit() and int(v) > self.max_bytes:
                return await problem(
                    413,
                    "body_too_large",
                    "Request body too large",
                    f"at most {self.max_bytes} bytes",
                )(scope, receive, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except BodyTooLarge:
            await problem(
                413, "body_too_large", "Request body too large", f"at most {self.max_bytes} bytes"
            )(scope, receive, send)


class BodyTooLarge(Exception):
    pass


class NulGuardMiddleware:
    """PostgreSQL text cannot hold NUL: a request carrying one in its path, query or body
    is refused here as a 422 rather than failing in the driver as a 500."""

    BODY_MARKERS: tuple[bytes, ...] = (b"\x00", b"\\u0000")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    @staticmethod
    def _refuse() -> JSONResponse:
        return problem(422, "invalid_input", "Invalid input", "text may not contain NUL characters")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        head = scope.get("raw_path", b"") + b"?" + scope.get("query_string", b"")
        if b"\x00" in head or b"%00" in head:
            return await self._refuse()(scope, receive, send)
        markers = self.BODY_MARKERS
        for k, v in scope["headers"]:
            if k == b"content-type" and v.startswith(b"application/x-www-form-urlencoded"):
                markers = (*markers, b"%00")
        # read the body first (BodyLimitMiddleware outside bounds it), then replay it
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if any(m in body for m in markers):
            return await self._refuse()(scope, receive, send)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def broker_reachable(timeout: float = 1.0) -> bool:
    # not at import: the gateway imports this module and never publishes, so Celery and
    # its broker client (14 MB) stay out of its memory
    from .broker import celery

    def check() -> bool:
        with celery.connection_for_write() as conn:
            # kombu takes seconds as a float here; its annotation says int
            conn.ensure_connection(max_retries=1, timeout=timeout)  # type: ignore[arg-type]
        return True

    try:
        return await asyncio.wait_for(asyncio.to_thread(check), timeout + 0.5)
    except Exception:
        return False


# FastAPI's own OpenTelemetry instrumentation (in newer releases) asks the global
# providers on every request (2-3% of a service's CPU in bench scenario 1); we export
# Prometheus metrics and structured logs ourselves, so it is off where it exists
NO_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def create_service_app(
    service: str,
    routers: Sequence[APIRouter],
    *,
    title: str,
    description: str = "",
    on_startup: Callable[[], Awaitable[None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    on_metrics: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    configure_logging(service)
    db = get_db(service)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if on_startup:
            await on_startup()
        yield
        if on_shutdown:
            await on_shutdown()
        await db.dispose()

    app = FastAPI(
        title=title, description=description, version="1.0.0", lifespan=lifespan, **NO_TELEMETRY
    )
    install_error_handlers(app)
    for r in routers:
        app.include_router(r)

    @app.get("/healthz", tags=["health"], include_in_schema=False)
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "service": service}

    # response_model=None: as before the annotation, no response model is derived from it
    @app.get("/readyz", tags=["health"], include_in_schema=False, response_model=None)
    async def readyz() -> dict[str, Any] | Response:
        checks: dict[str, str] = {}
        try:
            async with db.session() as s:
                await s.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception:
            checks["database"] = "unreachable"
        checks["broker"] = "ok" if await broker_reachable() else "unreachable"
        if all(v == "ok" for v in checks.values()):
            return {"status": "ready", "service": service, "checks": checks}
        return problem(503, "not_ready", "Not ready", f"{service} is not ready", checks=checks)

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    async def metrics() -> Response:
        # never routed by the gateway: only the cluster's Prometheus reaches it
        await refresh_outbox_lag(db)
        if on_metrics:
            await on_metrics()
        return metrics_response()

    app.add_middleware(IdempotencyMiddleware, db=db)
    app.add_middleware(NulGuardMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=get_settings().max_body_bytes)
    app.add_middleware(MetricsMiddleware, process=service)
    app.add_middleware(RequestContextMiddleware, process=service)
    return app
