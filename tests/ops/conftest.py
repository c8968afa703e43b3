"""A platform of its own for the operations tests: same database and broker as the suite,
its own ports and queue, logs at DEBUG (so the secret scan reads every line a process can
write) and the worker's metrics endpoint switched on."""

from __future__ import annotations

import pytest

from services.common import devstack
from tests.conftest import DATA


@pytest.fixture(scope="session")
def ops_platform(infra):
    ports = {
        name: devstack.free_port()
        for name in ("gateway", "catalog", "orders", "leaders", "settlement", "payments")
    }
    worker_metrics = devstack.free_port()
    supervisor = devstack.Supervisor(
        DATA / "run" / f"{infra.run_id}-ops", log_dir=infra.supervisor.log_dir / "ops"
    )
    platform = devstack.start_platform(
        data_dir=DATA,
        database_url=infra.database_url,
        broker_url=infra.broker_url,
        payments_base=None,
        ports=ports,
        extra_env={
            **infra.env,
            "CELERY_QUEUE": f"{infra.queue}-ops",
            "LOG_LEVEL": "DEBUG",
            "WORKER_METRICS_PORT": str(worker_metrics),
            # a second platform on a PostgreSQL other suites share: stay light on connections
            "DB_POOL_SIZE": "2",
            "DB_MAX_OVERFLOW": "4",
        },
        supervisor=supervisor,
    )
    platform.worker_metrics_url = f"http://127.0.0.1:{worker_metrics}/metrics"
    platform.log_dir = supervisor.log_dir
    try:
        devstack.wait_http(
            platform.worker_metrics_url, alive=lambda: supervisor.procs["worker"].poll() is None
        )
        yield platform
    finally:
        platform.stop()


@pytest.fixture(scope="session")
async def ops_seeded(ops_platform):
    from services.common.seed import seed_demo

    await seed_demo()


@pytest.fixture(scope="session")
def ops_api(ops_platform, ops_seeded) -> str:
    return f"{ops_platform.gateway_url}/api/v1"
