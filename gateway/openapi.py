"""One OpenAPI document for the public API, merged from every service's own, and the
Swagger UI that reads it."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import aiohttp
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from services.common.settings import SERVICES

from .proxy import Upstreams
from .routing import PREFIX, is_public

TITLE = "Group buying API"
CACHE_S = 30


def install(app: FastAPI, upstreams: Upstreams) -> None:
    """`/api/v1/openapi.json` (merged at most every 30 s) and `/docs`."""
    cache: dict[str, Any] = {}

    @app.get(f"{PREFIX}/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        cached = cache.get("doc")
        if cached and time.monotonic() - cache["at"] < CACHE_S:
            return JSONResponse(cached)
        doc = await merged_openapi(upstreams)
        cache.update(doc=doc, at=time.monotonic())
        return JSONResponse(doc)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=f"{PREFIX}/openapi.json", title=TITLE)


async def merged_openapi(upstreams: Upstreams) -> dict[str, Any]:
    """One document for the public API: every service's public paths under /api/v1."""

    async def fetch(service: str) -> tuple[str, dict | None]:
        try:
            return service, (await upstreams.get_json(service, "/openapi.json", timeout=3.0))[1]
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return service, None

    doc = _empty_document()
    for service, spec in await asyncio.gather(*(fetch(s) for s in SERVICES)):
        if spec is None:
            doc.setdefault("x-unavailable", []).append(service)
        else:
            _merge(doc, service, spec)
    return doc


def _empty_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": "1.0.0",
            "description": "Community group buying: daily deals, group leaders, "
            "commissions. Money is integer fen (CNY).",
        },
        "paths": {},
        "components": {
            "schemas": {},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
        "security": [{"bearer": []}],
    }


def _merge(doc: dict[str, Any], service: str, spec: dict[str, Any]) -> None:
    """Adds one service's schemas and public paths; a schema whose name another service
    already took for a different shape is renamed `<service>_<name>`."""
    merged = doc["components"]["schemas"]
    schemas = spec.get("components", {}).get("schemas", {})
    renames = {
        name: f"{service}_{name}"
        for name, schema in schemas.items()
        if merged.get(name) is not None and merged[name] != schema
    }
    for name, schema in schemas.items():
        merged[renames.get(name, name)] = _renamed_refs(copy.deepcopy(schema), renames)
    for path, ops in spec.get("paths", {}).items():
        if "/internal" in path or path in ("/healthz", "/readyz"):
            continue
        fixed = _renamed_refs(ops, renames)
        for method, op in fixed.items():
            if isinstance(op, dict):
                public = is_public(method.upper(), path.lstrip("/"))
                op["security"] = [] if public else [{"bearer": []}]
                op.setdefault("responses", {}).setdefault("default", _problem_response())
        doc["paths"][f"{PREFIX}{path}"] = fixed


def _problem_response() -> dict[str, Any]:
    return {
        "description": "Problem (RFC 9457)",
        "content": {"application/problem+json": {"schema": {"type": "object"}}},
    }


def _renamed_refs(node: Any, renames: dict[str, str]) -> Any:
    """A copy of `node` whose schema references follow `renames`."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                target = v.rsplit("/", 1)[-1]
                out[k] = f"#/components/schemas/{renames.get(target, target)}"
            else:
                out[k] = _renamed_refs(v, renames)
        return out
    if isinstance(node, list):
        return [_renamed_refs(x, renames) for x in node]
    return node
