"""The pooled client one service uses to ask another a synchronous question.

It sends the service token and the request id; a peer that is down becomes
`PeerUnavailable` (503), a slow one `PeerTimeout` (504), and a peer's problem+json
is re-raised as the same domain error so the caller's client sees the real `code`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import structlog

from .errors import DomainError, PeerTimeout, PeerUnavailable
from .settings import get_settings

log = structlog.get_logger()


class PeerError(DomainError):
    """A peer answered with a problem; we pass its status and code through."""


class ServiceClient:
    def __init__(self, service: str, base_url: str | None = None) -> None:
        self.service = service
        self._base_url = base_url
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            s = get_settings()
            self._client = httpx.AsyncClient(
                base_url=self._base_url or s.service_url(self.service),
                timeout=httpx.Timeout(s.peer_read_timeout_s, connect=s.peer_connect_timeout_s),
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=50),
                headers={"x-service-token": s.service_token},
            )
        return self._client

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        retries: int = 0,
    ) -> Any:
        """`retries`: how many more times to send a call whose outcome is unknown (the
        peer unreachable, its answer lost or late). Only for calls the peer makes
        idempotent (a read, or a write keyed by our own id): the peer may have acted."""
        for attempt in range(retries + 1):
            try:
                return await self._request_once(method, path, json=json, params=params)
            except (PeerUnavailable, PeerTimeout):
                if attempt == retries:
                    raise
                log.warning("peer_call_retried", peer=self.service, path=path, attempt=attempt + 1)
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    async def _request_once(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        headers = {}
        rid = structlog.contextvars.get_contextvars().get("request_id")
        if rid:
            headers["x-request-id"] = rid
        try:
            resp = await self.client.request(
                method, path, json=json, params=params, headers=headers
            )
        except httpx.TimeoutException as e:
            raise PeerTimeout(f"{self.service} did not answer in time") from e
        except (httpx.TransportError, AttributeError) as e:
            # AttributeError: httpcore reading the peer address of a socket the peer
            # closed while it was being set up (the peer restarting): unavailable too
            raise PeerUnavailable(f"{self.service} is unavailable") from e
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {}
            if resp.status_code >= 500 and resp.status_code not in (503, 504):
                raise PeerUnavailable(f"{self.service} failed ({resp.status_code})")
            raise PeerError(
                body.get("detail") or f"{self.service} refused the request",
                code=body.get("code") or "peer_error",
                status=resp.status_code,
            )
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    async def get(self, path: str, **kw: Any) -> Any:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Any:
        return await self.request("POST", path, **kw)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
