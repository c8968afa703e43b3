"""Bounds an id must meet before it reaches PostgreSQL.

An id column is INTEGER: a larger number from a path, a query or a body would fail in
the driver as a 500, so it is refused as a 422 where it enters instead.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from pydantic import Field

DB_INT_MAX = 2**31 - 1

Id = Annotated[int, Field(gt=0, le=DB_INT_MAX)]
PathId = Annotated[int, Path(gt=0, le=DB_INT_MAX)]
