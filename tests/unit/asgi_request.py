"""A Starlette request built from an ASGI scope, for testing the gateway's pieces
without a server."""

from __future__ import annotations

from urllib.parse import unquote

from starlette.requests import Request


def asgi_request(
    method: str,
    raw_path: str,
    *,
    headers: dict[str, str] | None = None,
    query: bytes = b"",
    body: bytes = b"",
    client: str = "203.0.113.7",
) -> Request:
    scope = {
        "type": "http",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": (client, 4321),
        "server": ("127.0.0.1", 8000),
    }

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)
