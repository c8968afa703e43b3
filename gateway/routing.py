"""Which service answers which public path, which paths need no token, and the label
a path is counted under in the metrics."""

from __future__ import annotations

import re

PREFIX = "/api/v1"

# first path segment under /api/v1 -> service
ROUTES: dict[str, str] = {
    "auth": "leaders",
    "me": "leaders",
    "leaders": "leaders",
    "catalog": "catalog",
    "orders": "orders",
    "payments": "orders",
    "settlement": "settlement",
}

# (method, pattern) reachable without a bearer token
PUBLIC: list[tuple[str, re.Pattern[str]]] = [
    ("POST", re.compile(r"^auth/staff/token$")),
    ("POST", re.compile(r"^auth/wechat/session$")),
    ("GET", re.compile(r"^catalog/today$")),
    ("GET", re.compile(r"^catalog/days/[^/]+$")),
    ("GET", re.compile(r"^leaders/nearby$")),
    ("POST", re.compile(r"^payments/webhook$")),
]

AUTH_PATHS = re.compile(r"^auth/")
PICKUP_PATHS = re.compile(r"^orders/pickups$")


def service_for(path: str) -> str | None:
    """`path` is what follows /api/v1/. Internal routes are never reachable from outside."""
    segments = path.split("/")
    # dot segments could climb out of the service's public prefix (to /metrics, say)
    if any(seg.lower() == "internal" or seg in (".", "..") for seg in segments):
        return None
    return ROUTES.get(segments[0])


def is_public(method: str, path: str) -> bool:
    return any(method == m and p.match(path) for m, p in PUBLIC)


def gateway_route(scope) -> str:
    """Per public prefix: one label per service area, whatever ids the path holds."""
    path = scope["path"]
    if path.startswith(f"{PREFIX}/"):
        first = path[len(PREFIX) + 1 :].split("/", 1)[0]
        return f"{PREFIX}/{first}" if first in ROUTES or first == "openapi.json" else "unmatched"
    return path if path in ("/docs",) else "unmatched"
