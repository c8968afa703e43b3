"""The API gateway: the only public entry.

It verifies JWTs on every non-public route, rate-limits per client, adds a request id,
routes `/api/v1/<service>/...` to the service (never `/internal/`), answers 503 fast
when a service is down and 504 when it is slow, and serves one merged OpenAPI document.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qs

import aiohttp
import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import Response

from services.common.app import NO_TELEMETRY
from services.common.auth import bearer_token, verify_token
from services.common.errors import DomainError, install_error_handlers, problem
from services.common.logging import configure_logging
from services.common.metrics import MetricsMiddleware, metrics_response
from services.common.settings import SERVICES, get_settings

from . import openapi
from .proxy import Proxy, Upstreams
from .ratelimit import RateLimiter
from .routing import AUTH_PATHS, PICKUP_PATHS, PREFIX, gateway_route, is_public, service_for

log = structlog.get_logger()


def create_app() -> FastAPI:
    configure_logging("gateway")
    settings = get_settings()
    upstreams = Upstreams()
    proxy = Proxy(upstreams, settings.max_body_bytes)
    general = RateLimiter(settings.rate_limit_per_minute)
    auth_limiter = RateLimiter(settings.auth_rate_limit_per_minute)
    pickup_limiter = RateLimiter(settings.pickup_rate_limit_per_minute)

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
            return await forward(path, request, rid)
        except DomainError as e:
            headers = e.extra.pop("headers", None) or {}
            headers["x-request-id"] = rid
            return problem(e.status, e.code, e.title, e.detail, headers=headers, **e.extra)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")

    async def forward(path: str, request: Request, rid: str) -> Response:
        service = service_for(path)
        if service is None:
            return problem(
                404,
                "not_found",
                "Not found",
                f"no route {PREFIX}/{path}",
                headers={"x-request-id": rid},
            )
        client_ip = request.client.host if request.client else "unknown"
        token = bearer_token(request)
        principal = None
        if token:
            try:
                principal = verify_token(token)
            except DomainError:
                if not is_public(request.method, path):
                    raise
        if principal is None and not is_public(request.method, path):
            return problem(
                401,
                "missing_token",
                "Unauthorized",
                "a bearer token is required",
                headers={"www-authenticate": "Bearer", "x-request-id": rid},
            )
        client_key = f"user:{principal.user_id}" if principal else f"ip:{client_ip}"
        checks = [(general, client_key)]
        if AUTH_PATHS.match(path):
            checks.append((auth_limiter, f"ip:{client_ip}"))
            # and per account, so guessing one password from many addresses is slow too
            account = login_account(path, await request.body())
            if account:
                checks.append((auth_limiter, f"account:{account}"))
        if PICKUP_PATHS.match(path):
            checks.append((pickup_limiter, client_key))
            checks.append((pickup_limiter, f"ip:{client_ip}"))
        for limiter, key in checks:
            wait = limiter.take(key)
            if wait > 0:
                return problem(
                    429,
                    "rate_limited",
                    "Too many requests",
                    "slow down and retry later",
                    headers={"retry-after": str(max(1, math.ceil(wait))), "x-request-id": rid},
                )

        return await proxy.forward(request, service, path, rid, client_ip)

    return app


def login_account(path: str, body: bytes) -> str | None:
    """The account a login request is for (staff username or WeChat code), if it says."""
    try:
        if path == "auth/staff/token":
            values = parse_qs(body.decode("utf-8", "replace")).get("username")
            return f"staff:{values[0][:100]}" if values else None
        if path == "auth/wechat/session":
            code = orjson.loads(body).get("code")
            return f"wechat:{code[:200]}" if isinstance(code, str) else None
    except (orjson.JSONDecodeError, AttributeError, ValueError):
        return None
    return None


app = create_app()
