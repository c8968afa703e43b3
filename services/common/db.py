"""Async database access: one engine per service, each service in its own schema."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from .settings import get_settings
from .uow import UnitOfWork


def driver_url(url: str, driver: str) -> str:
    """postgresql://... -> postgresql+<driver>://... (any driver already named is replaced)."""
    scheme, rest = url.split("://", 1)
    return f"postgresql+{driver}://{rest}" if scheme.startswith("postgres") else url


# set in Celery worker processes (one task at a time needs only a couple of connections)
WORKER_POOL: dict[str, int] = {}


class Database:
    """The engine and session factory of one service (created lazily, once per process)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.schema = service
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._readers: async_sessionmaker[AsyncSession] | None = None
        self._autocommit: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            s = get_settings()
            self._engine = create_async_engine(
                driver_url(s.database_url_for(self.service), "asyncpg"),
                pool_size=WORKER_POOL.get("size", s.db_pool_size),
                max_overflow=WORKER_POOL.get("overflow", s.db_max_overflow),
                # no pre-ping: it cost two round trips per checkout (a tenth of the orders
                # service's CPU). A connection found dead fails its request as 503
                # `database_unavailable` and invalidates the whole pool at once, so after
                # a database restart the next request of each process works again.
                connect_args={
                    "server_settings": {
                        # which process holds a connection, for operators and drills
                        "application_name": f"groupbuy-{self.service}-{os.getpid()}",
                        "timezone": "UTC",
                    }
                },
            )
            self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)
            self._autocommit = self._engine.execution_options(isolation_level="AUTOCOMMIT")
            self._readers = async_sessionmaker(self._autocommit, expire_on_commit=False)
        return self._engine

    @property
    def autocommit_engine(self) -> AsyncEngine:
        """The engine in autocommit mode: each statement its own transaction."""
        _ = self.engine
        assert self._autocommit is not None
        return self._autocommit

    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        _ = self.engine
        assert self._sessions is not None
        return self._sessions

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker()() as session:
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for one read-only statement on the hot path: autocommit, so no
        BEGIN and ROLLBACK round trips around it. Several statements that must agree
        with each other belong in `session()` (one snapshot) instead."""
        _ = self.engine
        assert self._readers is not None
        async with self._readers() as session:
            yield session

    @asynccontextmanager
    async def statement(self) -> AsyncIterator[AsyncConnection]:
        """A plain connection (no ORM session) for one SQL statement that is atomic on
        its own (a read, or one INSERT with its CTEs): autocommit, so no BEGIN and COMMIT
        round trips, and none of a session's bookkeeping (a third of a small lookup's
        CPU). Two writes that must happen together belong in `transaction()`."""
        _ = self.engine
        assert self._autocommit is not None
        async with self._autocommit.connect() as c:
            yield c

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker()() as session, session.begin():
            yield session

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """`transaction()` on a plain connection, for hot paths made of SQL statements
        only (no ORM objects): the same BEGIN/COMMIT, none of a session's bookkeeping."""
        async with self.engine.begin() as c:
            yield c

    def unit(self, *, read_only: bool = False) -> UnitOfWork:
        """The one way routes and tasks open a transaction (services/common/uow.py)."""
        return UnitOfWork(self, read_only=read_only)

    async def dispose(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
            self._sessions = None
            self._readers = None
            self._autocommit = None


_databases: dict[str, Database] = {}


def get_db(service: str) -> Database:
    if service not in _databases:
        _databases[service] = Database(service)
    return _databases[service]
