"""The pooled client one service uses to ask another a synchronous question.

It sends the service token and the request id; a peer that is down becomes
`PeerUnavailable` (503), a slow one `PeerTimeout` (504), and a peer's problem+json
is re-raised as the same domain error so the caller's client sees the real `code`.

aiohttp rather than httpx: httpx's pool checks every pooled connection (a `select`
on each socket) to place each request, so with the 64 connections a busy sale day
keeps open, the gateway spent 60% of its CPU choosing a connection (py-spy, `make
bench`); aiohttp hands out an idle connection in constant time.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import aiohttp
import orjson
import structlog

from .errors import DomainError, PeerTimeout, PeerUnavailable
from .settings import get_settings

log = structlog.get_logger()


# headers a proxy must not pass on (RFC 9110 7.6.1), plus those it recomputes
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class SessionPerLoop:
    """One aiohttp session, made lazily on the loop that uses it (a worker process
    runs its tasks on a loop of its own, made after the fork)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        _all_sessions.add(self)

    def get(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            options = dict(self._options)
            connector = aiohttp.TCPConnector(
                limit=options.pop("limit", 100),
                limit_per_host=0,
                ttl_dns_cache=300,
                # below uvicorn's 5 s, so we never reuse a connection the peer is closing
                keepalive_timeout=4,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, json_serialize=dumps, **options
            )
            self._loop = loop
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            try:
                await session.close()
            except RuntimeError:  # made on a loop that is gone
                pass


_all_sessions: weakref.WeakSet[SessionPerLoop] = weakref.WeakSet()


async def close_all_sessions() -> None:
    """Close every pooled session this process opened (peers, the provider): for a
    one-off run (a CLI command, a test session) whose loop ends after its work."""
    for sessions in list(_all_sessions):
        await sessions.aclose()


def peer_failure(service: str, error: Exception) -> PeerUnavailable | PeerTimeout:
    """What a failed call to a peer tells its caller: an answer that did not come in time
    is a slow peer (504); a connection refused, cut or never taken is a peer that is down
    (503). aiohttp's connect timeout is a TimeoutError too, and is the latter."""
    if isinstance(error, TimeoutError) and not isinstance(error, aiohttp.ConnectionTimeoutError):
        return PeerTimeout(f"{service} did not answer in time")
    return PeerUnavailable(f"{service} is unavailable")


def peer_timeout(read_s: float, connect_s: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=read_s)


class PeerError(DomainError):
    """A peer answered with a problem; we pass its status and code through."""


class ServiceClient:
    def __init__(self, service: str, base_url: str | None = None) -> None:
        self.service = service
        self._base_url = base_url
        self._sessions: SessionPerLoop | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._sessions is None:
            s = get_settings()
            self._sessions = SessionPerLoop(
                timeout=peer_timeout(s.peer_read_timeout_s, s.peer_connect_timeout_s),
                headers={"x-service-token": s.service_token},
                limit=100,
            )
        return self._sessions.get()

    @property
    def base_url(self) -> str:
        return (self._base_url or get_settings().service_url(self.service)).rstrip("/")

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
            async with self._session().request(
                method, f"{self.base_url}{path}", json=json, params=params, headers=headers
            ) as resp:
                status, content = resp.status, await resp.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            raise peer_failure(self.service, e) from e
        if status >= 400:
            try:
                body = orjson.loads(content) if content else {}
            except orjson.JSONDecodeError:
                body = {}
            if not isinstance(body, dict):
                body = {}
            if status >= 500 and status not in (503, 504):
                raise PeerUnavailable(f"{self.service} failed ({status})")
            raise PeerError(
                body.get("detail") or f"{self.service} refused the request",
                code=body.get("code") or "peer_error",
                status=status,
            )
        if status == 204 or not content:
            return None
        return orjson.loads(content)

    async def get(self, path: str, **kw: Any) -> Any:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Any:
        return await self.request("POST", path, **kw)

    async def aclose(self) -> None:
        if self._sessions is not None:
            await self._sessions.aclose()
