"""The backup/restore drill: prove a backup can be restored and is worth restoring.

1. Open a read-only REPEATABLE READ transaction on the source and export its snapshot.
2. `pg_dump --snapshot` dumps exactly that snapshot, and the row count of every table and
   the balance of every ledger account are read in the same transaction, so a platform
   that keeps writing during the drill cannot make the comparison differ.
3. Restore the dump into a NEW database on the same server.
4. Run the ledger invariant check (`check-ledger`) against the restored copy and compare
   its row counts and balances with the source's snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from services.common.db import driver_url
from services.settlement.ledger import check_invariants

SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")


@dataclass
class Figures:
    """What a database holds: rows per table and balance per ledger account."""

    counts: dict[str, int] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(self.counts.values())


def export_snapshot(url: str) -> tuple[psycopg.Connection, str]:
    """A connection holding a read-only snapshot open, and the snapshot's id for pg_dump."""
    conn = psycopg.connect(url, connect_timeout=10)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    row = conn.execute("SELECT pg_export_snapshot()").fetchone()
    assert row is not None  # the function always answers one row
    return conn, row[0]


def read_figures(conn: psycopg.Connection) -> Figures:
    tables = conn.execute(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_type = 'BASE TABLE' AND table_schema <> ALL(%s) "
        "AND table_schema NOT LIKE 'pg\\_%%' ORDER BY 1, 2",
        (list(SYSTEM_SCHEMAS),),
    ).fetchall()
    figures = Figures()
    for schema, table in tables:
        count = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
        ).fetchone()
        assert count is not None  # count(*) always answers one row
        figures.counts[f"{schema}.{table}"] = count[0]
    if "settlement.accounts" in figures.counts:
        figures.balances = dict(
            conn.execute("SELECT code, balance_fen FROM settlement.accounts").fetchall()
        )
    return figures


def compare(source: Figures, restored: Figures) -> list[str]:
    """Every difference between the source's snapshot and the restored copy; [] if none."""
    problems = []
    for table in sorted(set(source.counts) | set(restored.counts)):
        a, b = source.counts.get(table), restored.counts.get(table)
        if a != b:
            problems.append(f"table {table}: {a} rows in the source, {b} restored")
    for code in sorted(set(source.balances) | set(restored.balances)):
        a, b = source.balances.get(code), restored.balances.get(code)
        if a != b:
            problems.append(f"account {code}: balance {a} in the source, {b} restored")
    return problems


async def ledger_problems(url: str) -> list[str]:
    """The ledger invariant check (`check-ledger`) against the database at `url`."""
    engine = create_async_engine(driver_url(url, "asyncpg"), pool_size=1, max_overflow=0)
    try:
        async with AsyncSession(engine) as s:
            return await check_invariants(s)
    finally:
        await engine.dispose()
