"""Forwarding a request to the service that answers it.

The body is capped, hop-by-hop headers are dropped both ways, the path goes on exactly as
the client encoded it, and a service that is down is a 503 (after the connect timeout)
while one that is slow is a 504 (after the read timeout). Refusals are raised as domain
errors; the caller renders them with the request id.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import aiohttp
import orjson
import structlog
from fastapi import Request
from fastapi.responses import Response
from yarl import URL

from services.common.errors import NotFound, PeerTimeout, problem
from services.common.http import HOP_BY_HOP as HOP_BY_HOP_PROXIED
from services.common.http import SessionPerLoop, peer_failure, peer_timeout
from services.common.settings import get_settings

from .routing import PREFIX

log = structlog.get_logger()
HOP_BY_HOP = HOP_BY_HOP_PROXIED | {"content-encoding"}  # bodies are passed on decoded


class Upstreams:
    """One pooled aiohttp session to every service (see `services.common.http` for why
    not httpx: its pool cost grew with every open connection)."""

    def __init__(self) -> None:
        s = get_settings()
        self.sessions = SessionPerLoop(
            timeout=peer_timeout(s.peer_read_timeout_s, s.peer_connect_timeout_s),
            limit=400,
            auto_decompress=False,
        )

    def url(self, service: str, raw_path: str, query: list[tuple[str, str]] | None = None) -> URL:
        """The service's URL for a path exactly as the client encoded it."""
        url = URL(get_settings().service_url(service).rstrip("/") + raw_path, encoded=True)
        return url.with_query(query) if query else url

    async def send(
        self,
        method: str,
        url: URL,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        timeout: float | None = None,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        extra: dict[str, Any] = {"timeout": aiohttp.ClientTimeout(total=timeout)} if timeout else {}
        async with self.sessions.get().request(
            method, url, headers=headers, data=body, allow_redirects=False, **extra
        ) as resp:
            return resp.status, list(resp.headers.items()), await resp.read()

    async def get_json(self, service: str, path: str, timeout: float) -> tuple[int, Any]:
        status, _, content = await self.send("GET", self.url(service, path), timeout=timeout)
        return status, orjson.loads(content) if status == 200 else None

    async def aclose(self) -> None:
        await self.sessions.aclose()


def headers_to_service(
    client_headers: Iterable[tuple[str, str]], request_id: str, client_ip: str
) -> dict[str, str]:
    """What the service sees: the client's headers minus hop-by-hop ones, our request id
    and client address, and never a service token (only peers may send one)."""
    headers = {k: v for k, v in client_headers if k.lower() not in HOP_BY_HOP}
    headers["x-request-id"] = request_id
    headers["x-forwarded-for"] = client_ip
    headers.pop("x-service-token", None)
    return headers


def headers_to_client(
    service_headers: Iterable[tuple[str, str]], request_id: str
) -> dict[str, str]:
    headers = {k.lower(): v for k, v in service_headers if k.lower() not in HOP_BY_HOP}
    headers["x-request-id"] = request_id
    return headers


def upstream_path(request: Request) -> str:
    # the path as the client encoded it: decoding and re-encoding it here turns a
    # control character into an unbuildable URL (a 500) instead of a 404
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    return raw_path.decode("latin-1").removeprefix(PREFIX)


class Proxy:
    def __init__(self, upstreams: Upstreams, max_body_bytes: int) -> None:
        self.upstreams = upstreams
        self.max_body_bytes = max_body_bytes

    async def forward(
        self, request: Request, service: str, path: str, request_id: str, client_ip: str
    ) -> Response:
        """`path` is what follows /api/v1/, for the log lines."""
        body = await request.body()
        if len(body) > self.max_body_bytes:
            # returned rather than raised, so it goes out as it always has: without the
            # request id header
            return problem(
                413,
                "body_too_large",
                "Request body too large",
                f"at most {self.max_body_bytes} bytes",
            )
        headers = headers_to_service(request.headers.items(), request_id, client_ip)
        try:
            query = list(request.query_params.multi_items())
            url = self.upstreams.url(service, upstream_path(request), query)
            status, service_headers, content = await self.upstreams.send(
                request.method, url, headers=headers, body=body
            )
        except (ValueError, aiohttp.InvalidURL) as e:
            raise NotFound("no such route") from e
        except (TimeoutError, aiohttp.ClientError) as e:
            failure = peer_failure(service, e)
            if isinstance(failure, PeerTimeout):
                log.warning("upstream_timeout", service=service, path=path)
            else:
                log.warning("upstream_unavailable", service=service, path=path, error=repr(e)[:200])
                # the request id listed first, as this answer always had it
                failure.extra["headers"] = {"x-request-id": request_id, "retry-after": "1"}
            raise failure from e
        return Response(
            content, status_code=status, headers=headers_to_client(service_headers, request_id)
        )
