"""The API gateway: the only public entry.

It verifies JWTs on every non-public route, rate-limits per client, adds a request id,
routes `/api/v1/<service>/...` to the service (never `/internal/`), answers 503 fast
when a service is down and 504 when it is slow, and serves one merged OpenAPI document.
Each of those is a module of this package; this one puts them together.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import Response

from services.common.app import NO_TELEMETRY
from services.common.errors import DomainError, NotFound, install_error_handlers, problem
from services.common.logging import configure_logging
from services.common.metrics import MetricsMiddleware
from services.common.settings import get_settings

from . import health, openapi
from .auth import authenticate, client_ip, client_key
from .limits import Limits
from .proxy import Proxy, Upstreams
from .routing import PREFIX, gateway_route, service_for


def create_app() -> FastAPI:
    configure_logging("gateway")
    settings = get_settings()
    upstreams = Upstreams()
    limits = Limits.from_settings(settings)
    proxy = Proxy(upstreams, settings.max_body_bytes)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await upstreams.aclose()

    app = FastAPI(
        title=openapi.TITLE,
        version="1.0.0",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        **NO_TELEMETRY,
    )
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, process="gateway", label=gateway_route)
    # straight onto the app, not through include_router: FastAPI 0.165 matches an
    # included router's routes through a layer of its own on every request, 10 us of
    # CPU a proxied request here
    health.install(app, upstreams)
    openapi.install(app, upstreams)
    # last: it matches every path under the prefix, openapi.json included
    app.add_api_route(
        f"{PREFIX}/{{path:path}}",
        public_api(limits, proxy),
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    return app


def public_api(limits: Limits, proxy: Proxy) -> Callable[[str, Request], Awaitable[Response]]:
    """Every request under /api/v1: route, authenticate, count, forward.

    Plain calls rather than FastAPI dependencies: this runs on every request, and each
    dependency would add 8-12 us of CPU to it (FastAPI 0.165), a tenth of what the
    gateway itself spends on a proxied request.
    """

    async def handle(path: str, request: Request) -> Response:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=rid)
        try:
            service = service_for(path)
            if service is None:
                raise NotFound(f"no route {PREFIX}/{path}")
            ip = client_ip(request)
            principal = authenticate(request, path)
            await limits.check(request, path, client_key(principal, ip), ip)
            return await proxy.forward(request, service, path, rid, ip)
        except DomainError as e:
            return refusal(e, rid)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")

    return handle


def refusal(e: DomainError, request_id: str) -> Response:
    """A request the gateway turns down, as problem+json carrying the request id."""
    headers = e.extra.pop("headers", None) or {}
    headers["x-request-id"] = request_id
    return problem(e.status, e.code, e.title, e.detail, headers=headers, **e.extra)


app = create_app()
