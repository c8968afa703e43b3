"""What the gateway passes on to a service and back, and how a failing service is told
to the client."""

from __future__ import annotations

import contextlib
import socket

import aiohttp
import orjson
import pytest
from starlette.requests import Request

from gateway.proxy import Proxy, Upstreams, headers_to_client, headers_to_service
from services.common.errors import DomainError
from services.common.settings import get_settings, override_settings
from tests.unit.asgi_request import asgi_request


def _request(method: str, raw_path: str, query: bytes = b"", body: bytes = b"") -> Request:
    headers = {"host": "gateway", "content-type": "application/json"}
    return asgi_request(method, raw_path, headers=headers, query=query, body=body)


class _Recording(Upstreams):
    def __init__(self, fail: Exception | None = None) -> None:
        super().__init__()
        self.fail = fail
        self.sent: list[tuple[str, str, dict, bytes | None]] = []

    async def send(self, method, url, *, headers=None, body=None, timeout=None):
        if self.fail is not None:
            raise self.fail
        self.sent.append((method, str(url), headers or {}, body))
        return 201, [("Content-Type", "application/json"), ("Content-Encoding", "gzip")], b"{}"


def test_hop_by_hop_headers_and_a_service_token_never_reach_a_service():
    sent = headers_to_service(
        [
            ("host", "gateway"),
            ("connection", "keep-alive"),
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("x-service-token", "forged"),
            ("x-forwarded-for", "198.51.100.1"),
            ("authorization", "Bearer t"),
        ],
        "rid-1",
        "203.0.113.7",
    )
    assert sent == {
        "authorization": "Bearer t",
        "x-request-id": "rid-1",
        "x-forwarded-for": "203.0.113.7",
    }


def test_hop_by_hop_headers_of_a_service_never_reach_the_client():
    back = headers_to_client(
        [
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "close"),
            ("Content-Length", "2"),
            ("X-Request-Id", "the service's"),
            ("Idempotency-Replayed", "true"),
        ],
        "rid-1",
    )
    assert back == {
        "content-type": "application/json",
        "x-request-id": "rid-1",
        "idempotency-replayed": "true",
    }


async def test_the_path_goes_on_as_the_client_encoded_it_with_every_query_value():
    upstreams = _Recording()
    proxy = Proxy(upstreams, max_body_bytes=100)
    request = _request("GET", "/api/v1/catalog/days/2026-01-01%0A", query=b"a=1&a=2")
    r = await proxy.forward(request, "catalog", "catalog/days/2026-01-01\n", "rid", "203.0.113.7")
    assert r.status_code == 201 and r.headers["x-request-id"] == "rid"
    assert "content-encoding" not in r.headers
    (method, url, headers, _), *_ = upstreams.sent
    base = get_settings().catalog_url.rstrip("/")
    assert (method, url) == ("GET", f"{base}/catalog/days/2026-01-01%0A?a=1&a=2")
    assert headers["x-forwarded-for"] == "203.0.113.7"


async def test_a_body_at_the_cap_is_forwarded_and_one_byte_more_is_413():
    upstreams = _Recording()
    proxy = Proxy(upstreams, max_body_bytes=10)
    at_cap = await proxy.forward(
        _request("POST", "/api/v1/orders", body=b"x" * 10), "orders", "orders", "rid", "ip"
    )
    assert at_cap.status_code == 201 and upstreams.sent[0][3] == b"x" * 10
    over = await proxy.forward(
        _request("POST", "/api/v1/orders", body=b"x" * 11), "orders", "orders", "rid", "ip"
    )
    assert over.status_code == 413
    assert orjson.loads(over.body)["code"] == "body_too_large"
    assert len(upstreams.sent) == 1


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        # aiohttp's timeouts are ClientErrors too: a slow answer must still be a 504
        (aiohttp.SocketTimeoutError("read"), 504, "service_timeout"),
        # ...and a connection never taken is a service that is down: 503, not 504
        (aiohttp.ConnectionTimeoutError("connect"), 503, "service_unavailable"),
        (aiohttp.ServerDisconnectedError(), 503, "service_unavailable"),
        (aiohttp.InvalidURL("http://x/\x00"), 404, "not_found"),
    ],
)
async def test_a_failing_service_is_told_as_a_problem(failure, status, code):
    proxy = Proxy(_Recording(fail=failure), max_body_bytes=10)
    with pytest.raises(DomainError) as e:
        await proxy.forward(_request("GET", "/api/v1/orders"), "orders", "orders", "rid", "ip")
    assert (e.value.status, e.value.code) == (status, code)
    if status == 503:
        assert e.value.extra["headers"]["retry-after"] == "1"


async def test_a_service_that_never_takes_the_connection_is_a_503_after_the_connect_timeout():
    """What a host that is down looks like: the connection is never taken. A listener
    that never accepts, its backlog full, makes the kernel drop further SYNs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            c.connect(("127.0.0.1", port))
        fillers.append(c)
    before = get_settings()
    override_settings(
        before.model_copy(
            update={"orders_url": f"http://127.0.0.1:{port}", "peer_connect_timeout_s": 0.3}
        )
    )
    upstreams = Upstreams()
    try:
        with pytest.raises(DomainError) as e:
            await Proxy(upstreams, max_body_bytes=10).forward(
                _request("GET", "/api/v1/orders"), "orders", "orders", "rid", "ip"
            )
        assert (e.value.status, e.value.code) == (503, "service_unavailable"), e.value
    finally:
        override_settings(before)
        await upstreams.aclose()
        for c in [*fillers, listener]:
            c.close()
