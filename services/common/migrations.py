"""Alembic for one schema per service: each service keeps its own history, version
table and tables, and its migrations/env.py runs them here. Where each service's
migrations live, and applying them all, is the composition package's
(`services.platform.migrations`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from alembic import context
from sqlalchemy import Table, create_engine, pool, text
from sqlalchemy.schema import SchemaItem
from sqlmodel import SQLModel

from .db import driver_url
from .settings import get_settings

if TYPE_CHECKING:
    from alembic.runtime.environment import NameFilterParentNames, NameFilterType

_LOCK_ID = 7_240_001


def run_migrations_online(schema: str) -> None:
    """Called from each service's migrations/env.py."""
    url = context.config.attributes.get("database_url") or get_settings().database_url_for(schema)
    engine = create_engine(driver_url(url, "psycopg"), poolclass=pool.NullPool)

    def include_name(
        name: str | None, type_: NameFilterType, parent_names: NameFilterParentNames
    ) -> bool:
        if type_ == "schema":
            return name == schema
        return True

    def include_object(
        obj: SchemaItem,
        name: str | None,
        type_: NameFilterType,
        reflected: bool,
        compare_to: SchemaItem | None,
    ) -> bool:
        if type_ == "table":
            # alembic types the object loosely; for type_ "table" it is a Table
            return cast(Table, obj).schema == schema
        return True

    with engine.connect() as conn:
        # one migrator at a time, even when several processes start together
        conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _LOCK_ID})
        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        conn.commit()
        context.configure(
            connection=conn,
            target_metadata=SQLModel.metadata,
            version_table_schema=schema,
            include_schemas=True,
            include_name=include_name,
            include_object=include_object,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _LOCK_ID})
        conn.commit()
    engine.dispose()
