"""Every event a producer wrote to its outbox keeps its contract: the payload validates
against its topic's model in services/contracts/events.py (strictly, as the JSON it is)
and is exactly the JSON that model writes, so a key added, dropped, renamed or retyped by
a producer fails the test that made it happen."""

from __future__ import annotations

import uuid

import orjson
from pydantic import ValidationError
from sqlalchemy import text

from services.common.db import get_db
from services.contracts.events import TOPICS

SCHEMAS = ("catalog", "orders", "leaders", "settlement")


async def outbox_ids() -> dict[str, set[uuid.UUID]]:
    """The events already in each outbox (so a check looks only at newer ones)."""
    seen = {}
    for schema in SCHEMAS:
        async with get_db(schema).session() as s:
            rows = await s.execute(text(f"SELECT id FROM {schema}.outbox"))
            seen[schema] = set(rows.scalars())
    return seen


def contract_broken(schema: str, topic: str, env: dict) -> str | None:
    """What is wrong with one outbox row, in one line that starts with its topic."""
    where = f"[{schema}.outbox {env.get('id')}]"
    model = TOPICS.get(topic)
    if model is None:
        return f"{topic}: no model for this topic in services/contracts/events.py {where}"
    if (env.get("topic"), env.get("producer")) != (topic, schema):
        return f"{topic}: envelope names {env.get('topic')} by {env.get('producer')} {where}"
    payload = env.get("payload")
    try:
        event = model.model_validate_json(orjson.dumps(payload), strict=True)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "payload"
        return (
            f"{topic}: payload does not validate against {model.__name__}: {loc}: "
            f"{first['msg']} (got {first.get('input')!r}; {e.error_count()} error(s)) {where}"
        )
    written = event.model_dump(mode="json")
    if written != payload:
        keys = sorted(k for k in {*written, *payload} if written.get(k) != payload.get(k))
        return (
            f"{topic}: payload is not what {model.__name__} writes, at {keys}: "
            f"{ {k: payload.get(k) for k in keys} } != { {k: written.get(k) for k in keys} } {where}"
        )
    return None


async def broken_contracts(seen: dict[str, set[uuid.UUID]] | None = None) -> list[str]:
    """One line per outbox row (not in `seen`) that breaks its topic's contract."""
    problems = []
    for schema in SCHEMAS:
        async with get_db(schema).session() as s:
            rows = await s.execute(
                text(
                    f"SELECT id, topic, payload FROM {schema}.outbox "
                    "WHERE NOT (id = ANY(:seen)) ORDER BY created_at, id"
                ),
                {"seen": list(seen[schema]) if seen else []},
            )
            for row in rows:
                problem = contract_broken(schema, row.topic, row.payload)
                if problem:
                    problems.append(problem)
    return problems
