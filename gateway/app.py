"""The API gateway: the only public entry.

It verifies JWTs on every non-public route, rate-limits per client, adds a request id,
routes `/api/v1/<service>/...` to the service (never `/internal/`), answers 503 fast
when a service is down and 504 when it is slow, and serves one merged OpenAPI document.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import Response

from services.common.app import NO_TELEMETRY
from services.common.errors import DomainError, NotFound, install_error_handlers, problem
from services.common.logging import configure_logging
from services.common.metrics import MetricsMiddleware, metrics_response
from services.common.settings import SERVICES, get_settings

from . import openapi
from .auth import authenticate, client_ip, client_key
from .limits import Limits
from .proxy import Proxy, Upstreams
from .routing import PREFIX, gateway_route, service_for

log = structlog.get_logger()


def create_app() -> FastAPI:
    configure_logging("gateway")
    settings = get_settings()
    upstreams = Upstreams()
    proxy = Proxy(upstreams, settings.max_body_bytes)
    limits = Limits.from_settings(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await upstreams.aclose()

    app = FastAPI(
        title="Group buying API",
        version="1.0.0",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        **NO_TELEMETRY,
    )
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, process="gateway", label=gateway_route)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"status": "ok", "service": "gateway"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        # the gateway's own; services' /metrics are never proxied (not under /api/v1)
        return metrics_response()

    @app.get("/readyz", include_in_schema=False)
    async def readyz():
        async def check(service: str) -> tuple[str, str]:
            try:
                status, _ = await upstreams.get_json(service, "/readyz", timeout=2.0)
                return service, "ok" if status == 200 else f"not ready ({status})"
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return service, "unreachable"

        checks = dict(await asyncio.gather(*(check(s) for s in SERVICES)))
        if all(v == "ok" for v in checks.values()):
            return {"status": "ready", "checks": checks}
        return problem(
            503,
            "not_ready",
            "Not ready",
            "a service behind the gateway is not ready",
            checks=checks,
        )

    app.include_router(openapi.router(upstreams))

    @app.api_route(
        f"{PREFIX}/{{path:path}}",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    async def public_api(path: str, request: Request) -> Response:
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
            headers = e.extra.pop("headers", None) or {}
            headers["x-request-id"] = rid
            return problem(e.status, e.code, e.title, e.detail, headers=headers, **e.extra)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")

    return app


app = create_app()
