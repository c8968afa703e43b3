"""The gateway's own endpoints for operators: liveness, readiness of every service
behind it, and its metrics."""

from __future__ import annotations

import asyncio

import aiohttp
from fastapi import FastAPI
from fastapi.responses import Response

from services.common.errors import problem
from services.common.metrics import metrics_response
from services.common.settings import SERVICES

from .proxy import Upstreams


def install(app: FastAPI, upstreams: Upstreams) -> None:
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
