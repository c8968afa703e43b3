"""Cursor pagination written once: `?limit=&cursor=` -> `{items, next_cursor}`.

The cursor is the last id seen (opaque to clients); lists are newest first.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel

from .bounds import DB_INT_MAX
from .errors import InvalidInput

T = TypeVar("T")
R = TypeVar("R")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


class PageParams(BaseModel):
    limit: int
    after_id: int | None


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = raw.partition(":")
        if kind != "id":
            raise ValueError
        last_id = int(value)
        if not 0 < last_id <= DB_INT_MAX:
            raise ValueError
        return last_id
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInput("cursor is not valid", code="invalid_cursor") from e


async def page_params(
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> PageParams:
    return PageParams(limit=limit, after_id=decode_cursor(cursor) if cursor else None)


PageDep = Annotated[PageParams, Depends(page_params)]


def make_page(
    rows: list[R], params: PageParams, id_of: Callable[[Any], int] = lambda r: r.id
) -> tuple[list[R], str | None]:
    """Callers fetch limit+1 rows; the extra one only says there is a next page."""
    has_more = len(rows) > params.limit
    rows = rows[: params.limit]
    return rows, (encode_cursor(id_of(rows[-1])) if has_more and rows else None)
