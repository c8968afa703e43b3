"""Outbox and inbox: facts that happened travel between services reliably.

* A producer writes the event to its own schema's `outbox` in the same transaction as
  the change (`emit_event`, `emit_events`: a model of services/contracts/events.py).
  After commit, `kick` relays it to the broker; a periodic sweep relays whatever a crash
  left behind. Publishing twice is allowed.
* A relay publishes its events in batches, one `events.dispatch` task each. The worker
  applies an event with a single subscriber there; one with several fans out to each
  subscriber as its own `events.consume` task, so one consumer's failure never blocks
  another's (a failed inline one is retried the same way).
* A consumer records the event id in its own `inbox` in the same transaction as its
  effect (`consume`): a redelivered or concurrently delivered event is a no-op.
"""

from __future__ import annotations

import asyncio
import os
import uuid
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

import orjson
import structlog
from sqlalchemy import Column, DateTime, String, Table, func, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlmodel import SQLModel

from .background import after_response
from .broker import broker_redis, celery
from .clock import clock
from .settings import get_settings

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult

    from services.contracts.events import Event

    from .db import Database

log = structlog.get_logger()


def outbox_table(schema: str) -> Table:
    key = f"{schema}.outbox"
    if key in SQLModel.metadata.tables:
        return SQLModel.metadata.tables[key]
    return Table(
        "outbox",
        SQLModel.metadata,
        Column("id", UUID(as_uuid=True), primary_key=True),
        Column("topic", String(100), nullable=False),
        Column("payload", JSONB, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("published_at", DateTime(timezone=True), nullable=True, index=True),
        schema=schema,
    )


def inbox_table(schema: str) -> Table:
    key = f"{schema}.inbox"
    if key in SQLModel.metadata.tables:
        return SQLModel.metadata.tables[key]
    return Table(
        "inbox",
        SQLModel.metadata,
        Column("event_id", UUID(as_uuid=True), primary_key=True),
        Column("consumer", String(120), primary_key=True),
        Column("topic", String(100), nullable=False),
        Column("handled_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        schema=schema,
    )


class Envelope(TypedDict):
    """An event as it travels: in the outbox's `payload` column, through the broker, to a
    consumer's handler."""

    id: str
    topic: str
    producer: str
    occurred_at: str  # ISO 8601
    payload: dict[str, Any]
    request_id: NotRequired[str]


def envelope(
    topic: str,
    payload: dict[str, Any],
    producer: str,
    event_id: uuid.UUID | None = None,
    at: datetime | None = None,
) -> Envelope:
    env: Envelope = {
        "id": str(event_id or uuid.uuid4()),
        "topic": topic,
        "producer": producer,
        "occurred_at": (at or clock.now()).isoformat(),
        "payload": payload,
    }
    # the request that caused the event, so the tasks it triggers log under the same id
    rid = structlog.contextvars.get_contextvars().get("request_id")
    if rid:
        env["request_id"] = rid
    return env


async def emit(
    session: AsyncSession | AsyncConnection,
    schema: str,
    topic: str,
    payload: dict[str, Any],
    event_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Record an event in the producer's outbox, inside the caller's transaction."""
    eid = event_id or uuid.uuid4()
    env = envelope(topic, payload, schema, eid)
    await session.execute(
        text(
            f"INSERT INTO {schema}.outbox (id, topic, payload, created_at) "
            "VALUES (:id, :topic, CAST(:payload AS jsonb), :at) ON CONFLICT (id) DO NOTHING"
        ),
        {"id": eid, "topic": topic, "payload": orjson.dumps(env).decode(), "at": clock.now()},
    )
    return eid


async def emit_event(
    session: AsyncSession | AsyncConnection,
    schema: str,
    event: Event,
    event_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """`emit` of a typed event (services/contracts/events.py): the model names the topic
    and is the payload."""
    return await emit(session, schema, event.topic, event.model_dump(mode="json"), event_id)


async def emit_events(
    session: AsyncSession | AsyncConnection,
    schema: str,
    events: Sequence[Event],
    at: datetime | None = None,
) -> None:
    """`emit_event` for many events in one statement, however many there are (a cutoff
    moves 100,000 orders): one outbox row each, all occurring `at` (the change's time)."""
    if not events:
        return
    at = at or clock.now()
    ids = _uuid4_texts(len(events))
    # what all of them share, worked out once: per event it was most of the time
    common = envelope("", {}, schema, None, at)
    await session.execute(
        text(
            f"INSERT INTO {schema}.outbox (id, topic, payload, created_at) "
            "SELECT v.id, v.topic, v.p, :now FROM unnest(CAST(:ids AS uuid[]), "
            "CAST(:topics AS text[]), CAST(:p AS jsonb[])) AS v(id, topic, p)"
        ),
        {
            "now": at,
            "ids": ids,
            "topics": [e.topic for e in events],
            "p": [
                orjson.dumps(
                    common | {"id": i, "topic": e.topic, "payload": e.model_dump(mode="json")}
                ).decode()
                for i, e in zip(ids, events, strict=True)
            ],
        },
    )


def _uuid4_texts(n: int) -> list[str]:
    """`n` random (version 4) UUIDs as text, as `str(uuid.uuid4())` writes them: that took
    3.7 us of CPU an event here, a fifth of writing a cutoff's 100,000; this takes 0.9 us."""
    h = os.urandom(16 * n).hex()
    return [
        f"{h[k : k + 8]}-{h[k + 8 : k + 12]}-4{h[k + 13 : k + 16]}-"
        f"{'89ab'[int(h[k + 16], 16) & 3]}{h[k + 17 : k + 20]}-{h[k + 20 : k + 32]}"
        for k in range(0, 32 * n, 32)
    ]


PUBLISH_BATCH = 100


def _publish(envelopes: list[Envelope]) -> None:
    """One broker message per batch of events: publishing costs about a millisecond of
    CPU per message, which per event was an eighth of the orders service's time."""
    with celery.producer_or_acquire() as producer:
        for start in range(0, len(envelopes), PUBLISH_BATCH):
            batch = envelopes[start : start + PUBLISH_BATCH]
            rid = batch[0].get("request_id") if len(batch) == 1 else None
            celery.send_task(
                "events.dispatch",
                args=[batch],
                headers={"request_id": rid} if rid else None,
                producer=producer,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )


async def relay_outbox(db: Database, limit: int = 500) -> int:
    """Publish unpublished events of one service; safe to run concurrently and repeatedly."""
    schema = db.schema
    total = 0
    while True:
        async with db.transaction() as s:
            rows = (
                await s.execute(
                    text(
                        f"SELECT id, payload FROM {schema}.outbox WHERE published_at IS NULL "
                        "ORDER BY created_at LIMIT :n FOR UPDATE SKIP LOCKED"
                    ),
                    {"n": limit},
                )
            ).all()
            if not rows:
                return total
            await asyncio.to_thread(_publish, [r.payload for r in rows])
            await s.execute(
                text(f"UPDATE {schema}.outbox SET published_at = now() WHERE id = ANY(:ids)"),
                {"ids": [r.id for r in rows]},
            )
            total += len(rows)
        if len(rows) < limit:
            return total


def broker_mark_key() -> str:
    return f"groupbuy:broker-mark:{get_settings().celery_queue}"


def _redis_run_id(client: Any) -> str:
    return str(client.info("server").get("run_id", ""))


def broker_restarted() -> bool:
    """True when the broker is not the one the sweep last marked: it restarted (a new
    `run_id`), or lost its data (the mark is gone), or is new. Whatever it held but had not
    delivered may be gone: without its data everything queued, and even with it a task a
    worker had popped but not yet recorded as unacknowledged when the broker died. Only a
    Redis broker can be asked; RabbitMQ keeps durable queues across restarts."""
    with broker_redis() as client:
        if client is None:
            return False
        mark = client.get(broker_mark_key())
        mark = mark.decode() if isinstance(mark, bytes) else mark
        return mark != _redis_run_id(client)


def mark_broker() -> None:
    with broker_redis() as client:
        if client is not None:
            client.set(broker_mark_key(), _redis_run_id(client))


# A worker killed outright can lose a task beyond the broker's redelivery: Redis hands a
# task over (BRPOP) before the worker records it as unacknowledged, so one whose answer
# was still in the dead worker's socket is gone (seen in the SIGKILL test under load: one
# dispatch of 120). Each worker keeps a liveness mark; a mark that expired instead of
# being removed at a clean shutdown makes the sweep replay recent events, as after a
# broker restart (consumers' inboxes make the repeats no-ops). Redis only: RabbitMQ
# requeues whatever a dead consumer had not acknowledged.


def _workers_key(queue: str | None = None) -> str:
    return f"groupbuy:workers:{queue or get_settings().celery_queue}"


def _worker_key(node: str, queue: str | None = None) -> str:
    return f"{_workers_key(queue)}:{node}"


def worker_alive(node: str, ttl_s: float, queue: str | None = None) -> None:
    """The worker `node` is running (refreshed every ttl/3 by the worker itself)."""
    with broker_redis() as client:
        if client is not None:
            client.sadd(_workers_key(queue), node)
            client.set(_worker_key(node, queue), "1", px=int(ttl_s * 1000))


def worker_stopped(node: str, queue: str | None = None) -> None:
    """A clean shutdown: the worker handed its tasks back, nothing to replay."""
    with broker_redis() as client:
        if client is not None:
            client.delete(_worker_key(node, queue))
            client.srem(_workers_key(queue), node)


def workers_lost(queue: str | None = None) -> list[str]:
    """Workers whose liveness mark expired: killed, not stopped. Each is reported to one
    sweep only (the SREM that removes it decides)."""
    with broker_redis() as client:
        if client is None:
            return []
        lost = []
        for node in client.smembers(_workers_key(queue)):
            node = node.decode() if isinstance(node, bytes) else node
            if not client.exists(_worker_key(node, queue)) and client.srem(
                _workers_key(queue), node
            ):
                lost.append(node)
        return lost


async def replay_recent(db: Database, window_s: float) -> int:
    """Mark events published within the window as unpublished, so the relay sends them
    again: the broker that held them lost them."""
    async with db.transaction() as s:
        # an UPDATE's result is a CursorResult (it has rowcount); execute() says Result
        return cast(
            "CursorResult[Any]",
            await s.execute(
                text(
                    f"UPDATE {db.schema}.outbox SET published_at = NULL "
                    "WHERE published_at >= now() - make_interval(secs => :w)"
                ),
                {"w": window_s},
            ),
        ).rowcount


async def unpublish(db: Database, event_id: str) -> None:
    """Hand an event back to the relay (a broker lost it on its way to a consumer)."""
    async with db.transaction() as s:
        await s.execute(
            text(f"UPDATE {db.schema}.outbox SET published_at = NULL WHERE id = :id"),
            {"id": uuid.UUID(event_id)},
        )


@dataclass
class _Pump:
    running: bool = False
    again: bool = False


_pumps: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Pump]] = (
    weakref.WeakKeyDictionary()
)


def kick(db: Database) -> None:
    """Relay right after a commit, without making the request wait for the broker; the
    periodic sweep publishes whatever this misses.

    Kicks coalesce: while a relay runs, further kicks ask for one more pass, so a burst of
    commits makes a few relays of many events instead of one relay (a transaction and a
    broker round trip) per request."""
    loop = asyncio.get_running_loop()
    pump = _pumps.setdefault(loop, {}).setdefault(db.schema, _Pump())
    if pump.running:
        pump.again = True
        return
    pump.running = True

    async def drain() -> None:
        try:
            while True:
                pump.again = False
                await relay_outbox(db)
                if not pump.again:
                    return
        finally:
            pump.running = False

    after_response(drain, f"relay {db.schema} outbox")


def retry_countdown(retries: int, visibility_timeout_s: float) -> float:
    """Exponential back-off, capped at a minute and below half the broker's visibility
    timeout: a Redis broker hands a task that waits longer than that to another worker
    while the first still holds it, so every retry of a failing consumer doubled, and
    one malformed event grew into hundreds of runs a second (seen with the tests' 10 s
    timeout, starving the worker)."""
    return max(0.5, min(60.0, 2.0**retries, visibility_timeout_s / 2))


# --- consumers ---------------------------------------------------------------------------

Handler = Callable[[AsyncSession, dict[str, Any], Envelope], Awaitable[None]]


@dataclass(frozen=True)
class Subscription:
    name: str
    service: str
    topic: str
    handler: Handler


SUBSCRIPTIONS: dict[str, Subscription] = {}


def subscribe(service: str, topic: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        name = f"{service}:{topic}:{handler.__name__}"
        SUBSCRIPTIONS[name] = Subscription(name, service, topic, handler)
        return handler

    return register


def subscribers_of(topic: str) -> list[Subscription]:
    return [s for s in SUBSCRIPTIONS.values() if s.topic == topic]


async def consume(db: Database, subscription: Subscription, env: Envelope) -> bool:
    """Apply an event once: the inbox row and the effect commit together or not at all."""
    async with db.transaction() as s:
        inserted = (
            await s.execute(
                text(
                    f"INSERT INTO {db.schema}.inbox (event_id, consumer, topic, handled_at) "
                    "VALUES (:id, :consumer, :topic, :at) ON CONFLICT DO NOTHING RETURNING event_id"
                ),
                {
                    "id": uuid.UUID(env["id"]),
                    "consumer": subscription.name,
                    "topic": env["topic"],
                    "at": clock.now(),
                },
            )
        ).first()
        if inserted is None:
            return False
        await subscription.handler(s, env["payload"], env)
    return True


def occurred_at(env: Envelope) -> datetime:
    return datetime.fromisoformat(env["occurred_at"])
