"""A unit of work: the one way a route or a task opens a transaction.

    async with db.unit() as uow:                 # a route or a task opens one...
        out = await service.approve(uow, app_id)  # ...calls one service function with it
    return out                                    # ...and the unit has committed

* **One transaction, one connection.** Repositories run SQL on `uow.connection` (a plain
  connection: none of an ORM session's bookkeeping on the hot paths) or use ORM objects
  through `uow.session`, made on first use and bound to the same connection and
  transaction, so both see each other's writes and commit together.
* **Commit on success, rollback on any exception**, then the after-commit effects run.
* **After-commit effects** are registered by the services, never done by routes: the
  relay kick that publishes the events the unit wrote (`uow.emit`, `uow.emit_many` do it
  themselves), a push of a read model to another service (`uow.after_commit`). They run
  only when the unit committed, once each per key, in the order registered, and never
  fail the request whose change is already committed (a beat job repeats each of them).
* **`db.unit(read_only=True)`** is for reads on the hot path: an autocommit connection,
  so no BEGIN and COMMIT round trips around a single statement. Several reads that must
  agree with each other (one snapshot) belong in a normal unit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from .events import emit_event, emit_events, kick

if TYPE_CHECKING:
    import uuid

    from services.contracts.events import Event

    from .db import Database

log = structlog.get_logger()

Effect = Callable[[], Awaitable[object] | None]


class UnitOfWork:
    def __init__(self, db: Database, *, read_only: bool = False) -> None:
        self.db = db
        self.schema = db.schema
        self.read_only = read_only
        self._connection: AsyncConnection | None = None
        self._session: AsyncSession | None = None
        self._effects: dict[object, Effect] = {}
        self.committed = False

    # --- opening and closing ---------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.read_only:
            self._connection = await self.db.autocommit_engine.connect()
        else:
            self._connection = await self.db.engine.connect()
            await self._connection.begin()  # BEGIN goes with the first statement
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._connection
        assert conn is not None
        try:
            if exc_type is None and not self.read_only:
                if self._session is not None:
                    await self._session.flush()
                await conn.commit()
            elif not self.read_only:
                await conn.rollback()
        finally:
            if self._session is not None:
                await self._session.close()
            await conn.close()
        if exc_type is None:
            self.committed = True
            await self._run_effects()

    @property
    def connection(self) -> AsyncConnection:
        """The unit's connection, for repositories made of SQL statements."""
        if self._connection is None:
            raise RuntimeError("a unit of work is used inside `async with db.unit()` only")
        return self._connection

    @property
    def session(self) -> AsyncSession:
        """An ORM session in the unit's transaction (made on first use)."""
        if self._session is None:
            self._session = AsyncSession(
                bind=self.connection,
                expire_on_commit=False,
                # the unit owns the transaction: the session joins it (no SAVEPOINT) and
                # its commit() only flushes; a rollback() still undoes the whole unit
                join_transaction_mode="rollback_only",
            )
        return self._session

    # --- after-commit effects --------------------------------------------------------------

    def after_commit(self, effect: Effect, *, key: object | None = None) -> None:
        """Run `effect` once the unit has committed (never if it rolls back). Effects with
        the same `key` run once (the first one registered)."""
        self._effects.setdefault(key if key is not None else object(), effect)

    async def _run_effects(self) -> None:
        effects, self._effects = list(self._effects.values()), {}
        for effect in effects:
            try:
                result = effect()
                if result is not None:
                    await result
            except Exception:  # committed already: a beat job repeats the effect
                log.warning("after_commit_deferred", exc_info=True)

    def relay_events(self) -> None:
        """Publish this service's outbox right after the commit (see `events.kick`)."""
        self.after_commit(lambda: kick(self.db), key="relay")

    # --- events ----------------------------------------------------------------------------

    async def emit(self, event: Event, event_id: uuid.UUID | None = None) -> uuid.UUID:
        """Record `event` in this service's outbox, in this unit; relayed after commit."""
        eid = await emit_event(self.connection, self.schema, event, event_id)
        self.relay_events()
        return eid

    async def emit_many(self, events: Sequence[Event], at: datetime | None = None) -> None:
        """`emit` for many events in one statement (see `events.emit_events`)."""
        if events:
            await emit_events(self.connection, self.schema, events, at)
            self.relay_events()

    async def execute(self, statement: Any, params: Any = None) -> Any:
        """Run one statement on the unit's connection (repositories' shorthand)."""
        return await self.connection.execute(statement, params)


def read_unit(db: Database) -> Callable[[], AsyncIterator[UnitOfWork]]:
    """A FastAPI dependency giving a route a read-only unit of `db` (services' deps.py).
    Routes that write open `async with db.unit()` themselves, so the commit happens
    before the answer is sent."""

    async def dependency() -> AsyncIterator[UnitOfWork]:
        async with db.unit(read_only=True) as uow:
            yield uow

    return dependency
