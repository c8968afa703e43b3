"""Orders' copy of what a placement needs from the leaders service: the shopper's
leader, and that leader's status and tier (the order's snapshot).

The leaders service bumps a version with every change of a binding or of a leader's
terms and sends the new state with it, as an event (always) and as a push right after
the changes a person acts on at once (leaders/projection.py). Each row here keeps the
highest version it was sent, so events and pushes may arrive late, twice or out of
order. A shopper or leader not (yet) copied here is asked of the leaders service once,
as before, and the answer is kept the same way.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.settings import get_settings

from .core import PEER_RETRIES, SCHEMA, leaders_client, log

_APPLY_BINDINGS = text(
    f"""
    INSERT INTO {SCHEMA}.shopper_leaders AS b (shopper_id, leader_id, version)
    SELECT * FROM unnest(CAST(:s AS int[]), CAST(:l AS int[]), CAST(:v AS bigint[]))
    ON CONFLICT (shopper_id) DO UPDATE SET leader_id = EXCLUDED.leader_id,
        version = EXCLUDED.version
    WHERE b.version < EXCLUDED.version
    """
)
_APPLY_TERMS = text(
    f"""
    INSERT INTO {SCHEMA}.leader_terms AS t (leader_id, status, tier, version)
    SELECT * FROM unnest(CAST(:l AS int[]), CAST(:st AS text[]), CAST(:t AS text[]),
        CAST(:v AS bigint[]))
    ON CONFLICT (leader_id) DO UPDATE SET status = EXCLUDED.status, tier = EXCLUDED.tier,
        version = EXCLUDED.version
    WHERE t.version < EXCLUDED.version
    """
)


async def apply(s: AsyncSession, bindings: list[dict], leaders: list[dict]) -> None:
    """Keep each row's newest version (one statement per table; no read-check-write)."""
    # one row per key per statement (ON CONFLICT cannot touch a row twice): the newest
    newest_b = {b["shopper_id"]: b for b in sorted(bindings, key=lambda b: b["version"])}
    newest_t = {t["leader_id"]: t for t in sorted(leaders, key=lambda t: t["version"])}
    if newest_b:
        rows = list(newest_b.values())
        await s.execute(
            _APPLY_BINDINGS,
            {
                "s": [b["shopper_id"] for b in rows],
                "l": [b["leader_id"] for b in rows],
                "v": [b["version"] for b in rows],
            },
        )
    if newest_t:
        rows = list(newest_t.values())
        await s.execute(
            _APPLY_TERMS,
            {
                "l": [t["leader_id"] for t in rows],
                "st": [t["status"] for t in rows],
                "t": [t["tier"] for t in rows],
                "v": [t["version"] for t in rows],
            },
        )


def _answer(leader_id: int, status: str, tier: str) -> dict:
    return {
        "leader_id": leader_id,
        "status": status,
        "tier": tier,
        "commission_rate": get_settings().rate_for_tier(tier),
        "accepts_orders": status == "active",
    }


async def leader_of(db, shopper_id: int) -> dict:
    """The shopper's leader with its status, tier and rate: from our copy, or (once per
    shopper or leader not copied yet) from the leaders service."""
    async with db.statement() as s:
        row = (
            await s.execute(
                text(
                    f"SELECT b.leader_id, t.status, t.tier FROM {SCHEMA}.shopper_leaders b "
                    f"JOIN {SCHEMA}.leader_terms t ON t.leader_id = b.leader_id "
                    "WHERE b.shopper_id = :s"
                ),
                {"s": shopper_id},
            )
        ).first()
    if row is not None:
        return _answer(*row)
    got = await leaders_client.get(f"/internal/shoppers/{shopper_id}/leader", retries=PEER_RETRIES)
    async with db.transaction() as s:
        await apply(
            s,
            [
                {
                    "shopper_id": shopper_id,
                    "leader_id": got["leader_id"],
                    "version": got["binding_version"],
                }
            ],
            [
                {
                    "leader_id": got["leader_id"],
                    "status": got["status"],
                    "tier": got["tier"],
                    "version": got["terms_version"],
                }
            ],
        )
    log.info("leader_copied", shopper_id=shopper_id, leader_id=got["leader_id"])
    return _answer(got["leader_id"], got["status"], got["tier"])
