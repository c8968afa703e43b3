"""The backup/restore drill (`groupbuy drill`) as an operator runs it, against the suite's
live, populated platform: dump, restore into a new database, ledger invariants there,
row counts and balances equal to the source. It must also fail when the data is bad."""

from __future__ import annotations

import psycopg

from services.platform import devstack
from services.platform.drill import Figures, compare
from tests.helpers import bound_shopper, open_day, shopper, staff, unique_day
from tests.ops.test_cli import groupbuy, scratch_db  # noqa: F401 - the fixture
from tests.settlement.conftest import earn_available, leader_api, new_leader


def drill_databases(infra) -> list[str]:
    with psycopg.connect(devstack.with_database(infra.server_url, "postgres")) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s",
                (f"{infra.db_name}_drill_%",),
            )
        ]


async def populate(base: str) -> None:
    """Orders, a payment, commissions and a paid withdrawal, through the real services."""
    ops = await staff(base)
    demo_leader = await shopper(base, "leader-standard")
    alice = await bound_shopper(base, demo_leader.user["leader_id"])
    # a day of its own: `/catalog/today` is whichever open day is earliest in the whole
    # suite's data, and a tier test's 61 days of time travel had the beat close the
    # demo's day (and every day before it) by the time the drill ran
    deal = (await open_day(ops, unique_day(), price=1200, stock=50, limit=5))[0]["id"]
    r = await alice.post("/orders", json={"items": [{"deal_id": deal, "quantity": 1}]})
    assert r.status_code == 201, r.text
    r = await alice.post(f"/orders/{r.json()['id']}/pay", json={"payment_method": "pm_card_visa"})
    assert r.status_code == 200, r.text
    leader = new_leader()
    await earn_available(leader, 5000)
    me = leader_api(base, leader)
    r = await me.post("/settlement/withdrawals", json={"amount_fen": 2000})
    assert r.status_code == 201, r.text
    r = await ops.post(f"/settlement/withdrawals/{r.json()['id']}/approve")
    assert r.status_code == 200 and r.json()["status"] == "paid", r.text
    r = await me.post("/settlement/withdrawals", json={"amount_fen": 1000})
    assert r.status_code == 201, r.text
    for api in (ops, demo_leader, alice, me):
        await api.aclose()


async def test_the_drill_restores_a_live_platform_into_a_new_database(infra, ops_api, tmp_path):
    await populate(ops_api)
    dump = tmp_path / "drill.dump"
    # the platform keeps running (beat jobs write) while the drill runs
    done = groupbuy("drill", "-o", str(dump), env={"DATABASE_URL": infra.database_url})
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "ledger invariants hold on the restored copy" in out
    assert "balances equal the source" in out and "drill passed" in out
    assert dump.stat().st_size > 0
    # the restored copy was a new database, dropped after the checks
    assert drill_databases(infra) == []
    print("\n" + done.stdout)


async def test_the_drill_fails_on_a_broken_ledger(infra, ops_api, scratch_db, tmp_path):  # noqa: F811
    await populate(ops_api)
    dump = tmp_path / "copy.dump"
    assert (
        groupbuy("backup", "-o", str(dump), env={"DATABASE_URL": infra.database_url}).returncode
        == 0
    )
    assert groupbuy("restore", str(dump), "--database-url", scratch_db, "--yes").returncode == 0
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        # a balance changed without a ledger entry: what a bad restore or a hand edit does
        code = conn.execute(
            "UPDATE settlement.accounts SET balance_fen = balance_fen + 1 WHERE id = "
            "(SELECT min(id) FROM settlement.accounts WHERE kind = 'available' "
            "AND balance_fen > 0) RETURNING code"
        ).fetchone()[0]
    done = groupbuy("drill", "--database-url", scratch_db)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert f"account {code} holds" in out
    assert "drill passed" not in out
    assert drill_databases(infra) == []


def test_the_comparison_names_every_difference():
    source = Figures({"orders.orders": 3, "settlement.accounts": 2}, {"a": 10, "b": 0})
    same = Figures(dict(source.counts), dict(source.balances))
    assert compare(source, same) == []
    lost = Figures({"orders.orders": 2}, {"a": 9, "b": 0})
    assert compare(source, lost) == [
        "table orders.orders: 3 rows in the source, 2 restored",
        "table settlement.accounts: 2 rows in the source, None restored",
        "account a: balance 10 in the source, 9 restored",
    ]
