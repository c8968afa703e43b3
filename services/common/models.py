"""Small helpers shared by every service's SQLModel tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, DateTime
from sqlmodel import Field

from .clock import clock
from .events import inbox_table, outbox_table
from .idempotency import idempotency_table


def utcnow() -> datetime:
    return clock.now()


def ts_field(nullable: bool = False, index: bool = False, default_now: bool = False) -> Any:
    """A timezone-aware timestamp column (stored in UTC)."""
    kwargs = {"default_factory": utcnow} if default_now else {"default": None}
    return Field(
        sa_column=Column(DateTime(timezone=True), nullable=nullable, index=index), **kwargs
    )


def plumbing_tables(schema: str) -> None:
    """The outbox, inbox and idempotency tables every service keeps in its own schema."""
    outbox_table(schema)
    inbox_table(schema)
    idempotency_table(schema)
