"""`Idempotency-Key` on our own POSTs: the same key and body replay the first answer,
the same key with another body is 409, a key still being worked on is 409.

Keys are scoped per caller (token subject) and stored in the service's own schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from datetime import timedelta
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import Column, DateTime, Integer, LargeBinary, String, Table, func, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import SQLModel
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import verify_token
from .clock import clock
from .errors import DomainError, database_unavailable, problem

if TYPE_CHECKING:
    from .db import Database

# A request holding a key refreshes its claim every CLAIM_HEARTBEAT; a claim left alone
# longer than IN_PROGRESS_GRACE belonged to a process that died (SIGKILL, OOM, a lost
# node), and the client's retry takes it over instead of being refused for a minute.
CLAIM_HEARTBEAT = timedelta(seconds=2)
IN_PROGRESS_GRACE = timedelta(seconds=10)
log = structlog.get_logger()


def idempotency_table(schema: str) -> Table:
    key = f"{schema}.idempotency_keys"
    if key in SQLModel.metadata.tables:
        return SQLModel.metadata.tables[key]
    return Table(
        "idempotency_keys",
        SQLModel.metadata,
        Column("key", String(300), primary_key=True),
        Column("request_hash", String(64), nullable=False),
        Column("status", String(16), nullable=False),
        Column("response_status", Integer, nullable=True),
        Column("content_type", String(100), nullable=True),
        Column("response_body", LargeBinary, nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        schema=schema,
    )


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, db: Database) -> None:
        self.app = app
        self.db = db

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        key = headers.get("idempotency-key")
        if not key:
            return await self.app(scope, receive, send)
        if len(key) > 200:
            return await problem(
                422,
                "invalid_idempotency_key",
                "Invalid Idempotency-Key",
                "Idempotency-Key must be at most 200 characters",
            )(scope, receive, send)
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        subject = "anonymous"
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            try:
                subject = str(verify_token(auth[7:].strip()).user_id)
            except DomainError:
                subject = "invalid"
        scoped = f"{subject}:{scope['path']}:{key}"
        digest = hashlib.sha256(body).hexdigest()

        try:
            replay = await self._claim(scoped, digest)
        except (DBAPIError, OSError) as e:
            log.warning("database_unavailable", path=scope["path"], error=str(e)[:300])
            # this middleware runs outside the app's error handlers: answer as they would
            return await database_unavailable()(scope, receive, send)
        if replay is not None:
            return await replay(scope, receive, send)

        sent_body = False

        async def replay_receive() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status = 500
        content_type = "application/json"
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status, content_type
            if message["type"] == "http.response.start":
                status = message["status"]
                for k, v in message.get("headers", []):
                    if k.decode().lower() == "content-type":
                        content_type = v.decode()
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        heartbeat = asyncio.create_task(self._keep_claim(scoped))
        try:
            await self.app(scope, replay_receive, capture)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            try:
                await self._finish(scoped, status, content_type, b"".join(chunks))
            except (DBAPIError, OSError) as e:
                # the answer is already sent and cannot change; the key stays 'started',
                # so a retry is told the request is in progress until the grace passes
                log.warning("idempotency_not_recorded", path=scope["path"], error=str(e)[:300])

    async def _claim(self, scoped: str, digest: str) -> Response | None:
        schema = self.db.schema
        async with self.db.transaction() as s:
            claimed = (
                await s.execute(
                    text(
                        f"INSERT INTO {schema}.idempotency_keys (key, request_hash, status, created_at) "
                        "VALUES (:k, :h, 'started', :now) ON CONFLICT (key) DO NOTHING RETURNING key"
                    ),
                    {"k": scoped, "h": digest, "now": clock.now()},
                )
            ).first()
            if claimed:
                return None
            row = (
                await s.execute(
                    text(
                        f"SELECT request_hash, status, response_status, content_type, response_body, "
                        f"created_at FROM {schema}.idempotency_keys WHERE key = :k FOR UPDATE"
                    ),
                    {"k": scoped},
                )
            ).first()
            if row is None:
                return problem(
                    409,
                    "idempotency_in_progress",
                    "Request in progress",
                    "a request with this Idempotency-Key is being processed",
                )
            if row.request_hash != digest:
                return problem(
                    409,
                    "idempotency_key_reused",
                    "Idempotency-Key reused",
                    "this Idempotency-Key was used with a different request body",
                )
            if row.status == "done":
                return Response(
                    row.response_body,
                    status_code=row.response_status,
                    media_type=row.content_type,
                    headers={"Idempotent-Replayed": "true"},
                )
            if clock.now() - row.created_at < IN_PROGRESS_GRACE:
                return problem(
                    409,
                    "idempotency_in_progress",
                    "Request in progress",
                    "a request with this Idempotency-Key is being processed",
                )
            await s.execute(
                text(f"UPDATE {schema}.idempotency_keys SET created_at = :now WHERE key = :k"),
                {"k": scoped, "now": clock.now()},
            )
            return None

    async def _keep_claim(self, scoped: str) -> None:
        """While the request runs, show it is alive (only long requests ever write)."""
        schema = self.db.schema
        while True:
            await asyncio.sleep(CLAIM_HEARTBEAT.total_seconds())
            try:
                async with self.db.transaction() as s:
                    await s.execute(
                        text(
                            f"UPDATE {schema}.idempotency_keys SET created_at = :now "
                            "WHERE key = :k AND status = 'started'"
                        ),
                        {"k": scoped, "now": clock.now()},
                    )
            except (DBAPIError, OSError) as e:
                log.warning("idempotency_heartbeat_failed", error=str(e)[:300])

    async def _finish(self, scoped: str, status: int, content_type: str, body: bytes) -> None:
        schema = self.db.schema
        async with self.db.transaction() as s:
            if status >= 500 or status == 409 and b"idempotency" in body:
                await s.execute(
                    text(
                        f"DELETE FROM {schema}.idempotency_keys WHERE key = :k "
                        "AND status = 'started'"
                    ),
                    {"k": scoped},
                )
            else:
                await s.execute(
                    text(
                        f"UPDATE {schema}.idempotency_keys SET status = 'done', response_status = :st, "
                        "content_type = :ct, response_body = :b WHERE key = :k"
                    ),
                    {"k": scoped, "st": status, "ct": content_type, "b": body},
                )
