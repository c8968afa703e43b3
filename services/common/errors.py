"""Domain errors and their problem+json (RFC 9457) rendering.

Service code raises a `DomainError` subclass with a stable `code`; one handler turns it
into `application/problem+json`. Routes never build HTTP errors by hand.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
log = structlog.get_logger()


class DomainError(Exception):
    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        status: int | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if code:
            self.code = code
        if status:
            self.status = status
        self.extra = extra


class InvalidInput(DomainError):
    status, code, title = 422, "invalid_input", "Invalid input"


class NotFound(DomainError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(DomainError):
    status, code, title = 409, "conflict", "State conflict"


class Forbidden(DomainError):
    status, code, title = 403, "forbidden", "Forbidden"


class Unauthorized(DomainError):
    status, code, title = 401, "unauthorized", "Unauthorized"


class RateLimited(DomainError):
    status, code, title = 429, "rate_limited", "Too many requests"


class PeerUnavailable(DomainError):
    status, code, title = 503, "service_unavailable", "A service is unavailable"


class PeerTimeout(DomainError):
    status, code, title = 504, "service_timeout", "A service did not answer in time"


class PaymentFailed(DomainError):
    status, code, title = 402, "payment_failed", "Payment failed"


def problem(
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://groupbuy.example/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail or title,
        "code": code,
    }
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


_STATUS_CODES = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    409: ("conflict", "State conflict"),
    413: ("body_too_large", "Request body too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    422: ("invalid_input", "Invalid input"),
    429: ("rate_limited", "Too many requests"),
}


def _jsonable_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        out.append(
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg")),
                "type": str(e.get("type")),
            }
        )
    return out


_CONNECTION_ERRORS = (
    "TooManyConnections",
    "CannotConnectNow",
    "ConnectionDoesNotExist",
    "ConnectionRefused",
    "PostgresConnectionError",
    "OSError",
)


def _is_connection_error(exc: DBAPIError) -> bool:
    orig = getattr(exc, "orig", None)
    names = {type(orig).__name__, type(getattr(orig, "__cause__", None)).__name__}
    text_ = str(orig)
    return (
        any(n.startswith(c) or c in n for n in names for c in _CONNECTION_ERRORS)
        or "too many clients" in text_
        or "connection refused" in text_.lower()
    )


def database_unavailable() -> JSONResponse:
    """The answer when the database is away: a retryable 503, not a 500 that tells the
    client its request was wrong."""
    return problem(
        503,
        "database_unavailable",
        "The database is unavailable",
        "try again shortly",
        headers={"retry-after": "1"},
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        headers = exc.extra.pop("headers", None)
        return problem(exc.status, exc.code, exc.title, exc.detail, headers=headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _jsonable_errors(list(exc.errors()))
        first = errors[0] if errors else {"loc": [], "msg": "invalid"}
        detail = f"{'.'.join(first['loc'])}: {first['msg']}"
        return problem(422, "invalid_input", "Invalid input", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code, title = _STATUS_CODES.get(exc.status_code, ("error", "Error"))
        return problem(
            exc.status_code,
            code,
            title,
            str(exc.detail) if exc.detail else title,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated or _is_connection_error(exc):
            log.warning("database_unavailable", path=request.url.path, error=str(exc.orig))
            return database_unavailable()
        log.exception("unhandled_database_error", path=request.url.path)
        return problem(500, "internal_error", "Internal error", "An unexpected error occurred")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", path=request.url.path)
        return problem(500, "internal_error", "Internal error", "An unexpected error occurred")
