"""Every service's migrations go down and up again on a populated database: a copy of
this run's data (the sale day, orders, users and leaders the suite has made so far)."""

from __future__ import annotations

import asyncio

import psycopg
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlmodel import SQLModel

import services.catalog.models
import services.leaders.models
import services.orders.models
import services.settlement.models  # noqa: F401 - every table in the metadata
from services.common.db import driver_url
from services.common.settings import SERVICES
from services.platform import devstack
from services.platform.migrations import alembic_config, downgrade_all, upgrade_all

KEPT = ["catalog.products", "catalog.deals", "leaders.users", "leaders.leaders", "orders.orders"]


def _tables(conn) -> list[str]:
    rows = conn.execute(
        "SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname = ANY(%s) "
        "AND tablename <> 'alembic_version' ORDER BY 1",
        (list(SERVICES),),
    )
    return [r[0] for r in rows]


def _copy_data(src_url: str, dst_url: str) -> None:
    with psycopg.connect(src_url) as src, psycopg.connect(dst_url) as dst:
        # foreign keys are checked by the source already; load in any order
        dst.execute("SET session_replication_role = replica")
        for table in _tables(src):
            with (
                src.cursor().copy(f"COPY {table} TO STDOUT (FORMAT BINARY)") as out,
                dst.cursor().copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as into,
            ):
                for chunk in out:
                    into.write(chunk)
        dst.commit()


def _counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in KEPT}


def _schema_drift(url: str) -> list:
    engine = create_engine(driver_url(url, "psycopg"))
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn,
                opts={
                    "include_schemas": True,
                    "include_name": lambda name, type_, parents: (
                        name in SERVICES if type_ == "schema" else name != "alembic_version"
                    ),
                    "compare_type": True,
                },
            )
            return compare_metadata(ctx, SQLModel.metadata)
    finally:
        engine.dispose()


def _migrate_round_trip(infra) -> dict:
    name = f"{infra.db_name}_migrations"
    url = devstack.create_database(infra.server_url, name, drop_first=True)
    try:
        upgrade_all(url)
        _copy_data(infra.database_url, url)
        before = _counts(url)
        assert before["orders.orders"] > 0 and before["leaders.users"] > 0

        # one step down and back up per service keeps the tables the step does not own
        for service in SERVICES:
            cfg = alembic_config(service, url)
            if ScriptDirectory.from_config(cfg).get_current_head().endswith("_0001"):
                continue  # one step down from the first revision is base, tested below
            command.downgrade(cfg, "-1")
            command.upgrade(cfg, "head")
        assert _counts(url) == before

        downgrade_all(url)
        with psycopg.connect(url) as conn:
            assert _tables(conn) == []
        upgrade_all(url)
        drift = _schema_drift(url)
        assert drift == [], drift
        return before
    finally:
        devstack.drop_database(infra.server_url, name)


async def test_migrations_downgrade_and_upgrade_a_populated_database(infra, world):
    before = await asyncio.to_thread(_migrate_round_trip, infra)
    print(f"\nmigrations round-tripped with rows: {before}")
