"""Alembic for one schema per service: each service keeps its own history, version
table and tables; `upgrade_all` applies every service's migrations (the CLI's
`migrate`, `make run` and the test fixtures call it)."""

from __future__ import annotations

from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import create_engine, pool, text
from sqlmodel import SQLModel

from .db import driver_url
from .settings import SERVICES, get_settings

ROOT = Path(__file__).resolve().parents[1]
_LOCK_ID = 7_240_001


def alembic_config(service: str, url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("script_location", str(ROOT / service / "migrations"))
    cfg.set_main_option("version_locations", str(ROOT / service / "migrations" / "versions"))
    cfg.attributes["database_url"] = url or get_settings().database_url_for(service)
    cfg.attributes["service"] = service
    return cfg


def run_migrations_online(schema: str) -> None:
    """Called from each service's migrations/env.py."""
    url = context.config.attributes.get("database_url") or get_settings().database_url_for(schema)
    engine = create_engine(driver_url(url, "psycopg"), poolclass=pool.NullPool)

    def include_name(name, type_, parent_names):
        if type_ == "schema":
            return name == schema
        return True

    def include_object(obj, name, type_, reflected, compare_to):
        if type_ == "table":
            return obj.schema == schema
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


def upgrade_all(url: str | None = None, revision: str = "head") -> None:
    for service in SERVICES:
        command.upgrade(alembic_config(service, url), revision)


def downgrade_all(url: str | None = None, revision: str = "base") -> None:
    for service in reversed(SERVICES):
        command.downgrade(alembic_config(service, url), revision)
