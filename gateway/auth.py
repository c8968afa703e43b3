"""Who is calling: the bearer token checked at the edge, and the key a client's requests
are counted under."""

from __future__ import annotations

from fastapi import Request

from services.common.auth import Principal, bearer_token, verify_token
from services.common.errors import DomainError, Unauthorized

from .routing import is_public


def authenticate(request: Request, path: str) -> Principal | None:
    """The caller, or None on a public route called without a valid token.

    `path` is what follows /api/v1/. On a public route a token that fails verification
    counts as no token; anywhere else it is refused with the reason `verify_token` gave.
    """
    token = bearer_token(request)
    principal = None
    if token:
        try:
            principal = verify_token(token)
        except DomainError:
            if not is_public(request.method, path):
                raise
    if principal is None and not is_public(request.method, path):
        raise Unauthorized(
            "a bearer token is required",
            code="missing_token",
            headers={"www-authenticate": "Bearer"},
        )
    return principal


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def client_key(principal: Principal | None, ip: str) -> str:
    """A signed-in caller is counted as themselves wherever they call from; anyone else
    by address."""
    return f"user:{principal.user_id}" if principal else f"ip:{ip}"
