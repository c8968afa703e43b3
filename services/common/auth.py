"""JWT issue/verify, the caller's identity, and role dependencies.

Only HS256 with our own secret is accepted (no `none`, no algorithm taken from the
token). Services verify the bearer token themselves as well as the gateway, so a
request that bypasses the gateway is no more trusted than one through it.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

import jwt
from fastapi import Depends, Request

from .errors import Forbidden, Unauthorized
from .settings import Settings, get_settings

ALGORITHM = "HS256"
ROLES = ("shopper", "leader", "staff")


@dataclass(frozen=True)
class Principal:
    user_id: int
    roles: tuple[str, ...] = field(default_factory=tuple)
    leader_id: int | None = None
    name: str = ""

    def has(self, role: str) -> bool:
        return role in self.roles

    @property
    def is_staff(self) -> bool:
        return "staff" in self.roles


def issue_token(
    user_id: int,
    roles: list[str],
    leader_id: int | None = None,
    name: str = "",
    ttl_s: int | None = None,
) -> str:
    s = get_settings()
    now = int(time.time())
    claims = {
        "sub": str(user_id),
        "roles": list(roles),
        "leader_id": leader_id,
        "name": name,
        "iss": s.jwt_issuer,
        "iat": now,
        "exp": now + (ttl_s if ttl_s is not None else s.jwt_ttl_s),
    }
    return jwt.encode(claims, s.jwt_secret, algorithm=ALGORITHM)


# Tokens already verified, with their expiry: a shopper's token is checked by the
# gateway and again by each service on every request, and PyJWT's decode was 5-7% of
# their CPU per order (bench scenario 1). Keyed by the whole token (its signature too)
# and the key that verified it, so only a token verified before is found; the expiry is
# checked on every use, as PyJWT does (no leeway). Bounded: emptied when full.
_VERIFIED: dict[tuple[str, str, str], tuple[Principal, float]] = {}
_VERIFIED_MAX = 50_000


def verify_token(token: str) -> Principal:
    s = get_settings()
    key = (token, s.jwt_secret, s.jwt_issuer)
    hit = _VERIFIED.get(key)
    if hit is not None:
        if time.time() < hit[1]:
            return hit[0]
        del _VERIFIED[key]
    principal, exp = _verify(token, s)
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.clear()
    _VERIFIED[key] = (principal, exp)
    return principal


def _verify(token: str, s: Settings) -> tuple[Principal, float]:
    try:
        claims = jwt.decode(
            token,
            s.jwt_secret,
            algorithms=[ALGORITHM],
            issuer=s.jwt_issuer,
            options={"require": ["exp", "iat", "sub", "iss"]},
        )
    except jwt.ExpiredSignatureError as e:
        raise Unauthorized("token expired", code="token_expired") from e
    except jwt.PyJWTError as e:
        raise Unauthorized("invalid token", code="invalid_token") from e
    roles = claims.get("roles") or []
    if not isinstance(roles, list) or any(r not in ROLES for r in roles):
        raise Unauthorized("invalid token", code="invalid_token")
    try:
        user_id = int(claims["sub"])
    except (TypeError, ValueError) as e:
        raise Unauthorized("invalid token", code="invalid_token") from e
    leader_id = claims.get("leader_id")
    principal = Principal(
        user_id=user_id,
        roles=tuple(roles),
        leader_id=int(leader_id) if leader_id is not None else None,
        name=str(claims.get("name") or ""),
    )
    return principal, float(claims["exp"])


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return token.strip()


def optional_principal(request: Request) -> Principal | None:
    token = bearer_token(request)
    return verify_token(token) if token else None


# The dependencies are `async def`: FastAPI runs a plain `def` dependency in a thread,
# two thread hops per request for work that takes microseconds (py-spy, `make bench`).


async def current_principal(request: Request) -> Principal:
    token = bearer_token(request)
    if not token:
        raise Unauthorized("a bearer token is required", code="missing_token")
    principal = verify_token(token)
    request.state.principal = principal
    return principal


def require_roles(*roles: str) -> Callable[[Principal], Awaitable[Principal]]:
    async def dependency(
        principal: Annotated[Principal, Depends(current_principal)],
    ) -> Principal:
        if not any(principal.has(r) for r in roles):
            raise Forbidden(f"this route is for {' or '.join(roles)}", code="wrong_role")
        return principal

    return dependency


async def require_service_token(request: Request) -> None:
    token = request.headers.get("x-service-token", "")
    if not hmac.compare_digest(token.encode(), get_settings().service_token.encode()):
        raise Forbidden("internal route: service token required", code="service_token_required")


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
Staff = Annotated[Principal, Depends(require_roles("staff"))]
Shopper = Annotated[Principal, Depends(require_roles("shopper"))]
Leader = Annotated[Principal, Depends(require_roles("leader"))]
LeaderOrStaff = Annotated[Principal, Depends(require_roles("leader", "staff"))]
ServiceCaller = Depends(require_service_token)
