"""When PostgreSQL drops a service's connections (a restart, a failover, an operator
killing sessions), the service is serving again on the next request: one request per
process may see a retryable 503, never a 500, and no request after it fails."""

from __future__ import annotations

import os

import psycopg
import pytest
from sqlalchemy.engine import make_url

from services.platform.devstack import with_database
from tests.helpers import problem_of, shopper, staff


def drop_connections_of(service: str, pid: int) -> int:
    """Terminate the database sessions of one service process (not this test's own)."""
    url = os.environ["DATABASE_URL"]
    db = make_url(url).database  # also for a socket URL (`?host=/...`), as embedded has
    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = %s",
            (db, f"groupbuy-{service}-{pid}"),
        ).fetchall()
    return len(rows)


@pytest.mark.parametrize(
    ("service", "path", "who"),
    [
        ("orders", "/orders", "shopper"),
        ("leaders", "/me", "shopper"),
        ("catalog", "/catalog/products", "staff"),
    ],
)
async def test_a_service_serves_again_right_after_its_connections_are_dropped(
    platform, gateway_url, service, path, who
):
    api = await (shopper(gateway_url) if who == "shopper" else staff(gateway_url))
    try:
        for _ in range(3):  # warm the pool with more than one connection
            answer = await api.get(path)
            assert answer.status_code == 200, answer.text
        assert drop_connections_of(service, platform.supervisor.procs[service].pid) >= 1

        statuses = []
        for _ in range(4):
            r = await api.get(path)
            statuses.append(r.status_code)
            if r.status_code != 200:
                assert r.status_code == 503, r.text
                assert problem_of(r)["code"] == "database_unavailable"
        # the dead pool is dropped at the first failure: at most that one request fails
        assert statuses.count(503) <= 1, statuses
        assert statuses[1:] == [200, 200, 200], statuses
    finally:
        await api.aclose()
