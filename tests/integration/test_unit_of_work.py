"""The unit of work (services/common/uow.py) on the real database: a change and its
after-commit effects happen together or not at all."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from services.common.db import get_db

pytestmark = pytest.mark.usefixtures("platform")

TABLE = "catalog.uow_probe"


@pytest.fixture
async def probe():
    db = get_db("catalog")
    async with db.unit() as uow:
        await uow.execute(text(f"CREATE TABLE IF NOT EXISTS {TABLE} (k text PRIMARY KEY)"))
    yield db
    async with db.unit() as uow:
        await uow.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))


async def _exists(db, key: str) -> bool:
    async with db.unit(read_only=True) as uow:
        found = await uow.execute(text(f"SELECT 1 FROM {TABLE} WHERE k = :k"), {"k": key})
        return found.first() is not None


async def test_commits_then_runs_effects_once_per_key(probe):
    key, ran = uuid.uuid4().hex, []

    async def seen_by_effect() -> None:
        ran.append(await _exists(probe, key))  # the effect sees the committed change

    async with probe.unit() as uow:
        await uow.execute(text(f"INSERT INTO {TABLE} VALUES (:k)"), {"k": key})
        uow.after_commit(seen_by_effect, key="push")
        uow.after_commit(seen_by_effect, key="push")  # registered twice, runs once
        uow.after_commit(lambda: ran.append("sync"))
        assert ran == []  # nothing runs before the commit
    assert ran == [True, "sync"]
    assert uow.committed


async def test_an_exception_rolls_back_and_drops_the_effects(probe):
    key, ran = uuid.uuid4().hex, []
    with pytest.raises(ValueError):
        async with probe.unit() as uow:
            await uow.execute(text(f"INSERT INTO {TABLE} VALUES (:k)"), {"k": key})
            uow.after_commit(lambda: ran.append("effect"))
            raise ValueError("a rule refused")
    assert not await _exists(probe, key)
    assert ran == [] and not uow.committed


async def test_session_and_connection_share_one_transaction(probe):
    key = uuid.uuid4().hex
    async with probe.unit() as uow:
        await uow.session.execute(text(f"INSERT INTO {TABLE} VALUES (:k)"), {"k": key})
        # the plain connection sees the session's uncommitted write: one transaction
        seen = await uow.execute(text(f"SELECT count(*) FROM {TABLE} WHERE k = :k"), {"k": key})
        assert seen.scalar_one() == 1
        assert not await _exists(probe, key)  # nobody else sees it before the commit
    assert await _exists(probe, key)


async def test_a_failing_effect_never_fails_the_committed_unit(probe):
    key, ran = uuid.uuid4().hex, []

    def broken() -> None:
        raise RuntimeError("orders is down")

    async with probe.unit() as uow:
        await uow.execute(text(f"INSERT INTO {TABLE} VALUES (:k)"), {"k": key})
        uow.after_commit(broken)
        uow.after_commit(lambda: ran.append("next"))
    assert await _exists(probe, key)
    assert ran == ["next"]  # the effects after the broken one still ran
