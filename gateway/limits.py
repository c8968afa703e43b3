"""The gateway's three rate limits: every client, sign-in, and pickup-code redemption.

Each limit is a `Limiter`; the ones here count in this process (`ratelimit.RateLimiter`,
so per gateway replica). A limiter that counts elsewhere (Redis, shared by every replica)
is another `Limiter` handed to `Limits.from_settings`; nothing else changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol
from urllib.parse import parse_qs

import orjson
from fastapi import Request

from services.common.errors import RateLimited
from services.common.settings import Settings

from .ratelimit import RateLimiter
from .routing import AUTH_PATHS, PICKUP_PATHS


class Limiter(Protocol):
    async def take(self, key: str) -> float:
        """Counts one request under `key`: 0 if allowed, else the seconds to wait."""
        ...


class LocalLimiter:
    """Token buckets in this process's memory."""

    def __init__(self, name: str, per_minute: int) -> None:
        self.name = name
        self.buckets = RateLimiter(per_minute)

    async def take(self, key: str) -> float:
        return self.buckets.take(key)


# (name, per minute) -> Limiter; the name keeps the limits' keys apart in a shared store
LimiterFactory = Callable[[str, int], Limiter]


class Limits:
    def __init__(self, per_client: Limiter, sign_in: Limiter, pickup: Limiter) -> None:
        self.per_client = per_client
        self.sign_in = sign_in
        self.pickup = pickup

    @classmethod
    def from_settings(cls, settings: Settings, limiter: LimiterFactory = LocalLimiter) -> Limits:
        return cls(
            per_client=limiter("per_client", settings.rate_limit_per_minute),
            sign_in=limiter("sign_in", settings.auth_rate_limit_per_minute),
            pickup=limiter("pickup", settings.pickup_rate_limit_per_minute),
        )

    def checks(
        self, path: str, client_key: str, client_ip: str, account: str | None
    ) -> list[tuple[Limiter, str]]:
        """What one request to `path` (after /api/v1/) is counted against, in order."""
        checks = [(self.per_client, client_key)]
        if AUTH_PATHS.match(path):
            checks.append((self.sign_in, f"ip:{client_ip}"))
            # and per account, so guessing one password from many addresses is slow too
            if account:
                checks.append((self.sign_in, f"account:{account}"))
        if PICKUP_PATHS.match(path):
            checks.append((self.pickup, client_key))
            checks.append((self.pickup, f"ip:{client_ip}"))
        return checks

    async def check(self, request: Request, path: str, client_key: str, client_ip: str) -> None:
        """Counts the request against each limit in turn; the first that refuses raises
        (the limits after it are not counted)."""
        account = login_account(path, await request.body()) if AUTH_PATHS.match(path) else None
        for limiter, key in self.checks(path, client_key, client_ip, account):
            wait = await limiter.take(key)
            if wait > 0:
                retry_after = str(max(1, math.ceil(wait)))
                raise RateLimited("slow down and retry later", headers={"retry-after": retry_after})


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
