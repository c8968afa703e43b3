"""The operations tests use the suite's platform: its logs (at DEBUG, so the secret scan
reads every line a process can write) and its worker's metrics endpoint."""

from __future__ import annotations

import pytest

from services.platform import devstack


@pytest.fixture(scope="session")
def ops_platform(infra, platform):
    platform.worker_metrics_url = f"http://127.0.0.1:{infra.worker_metrics_port}/metrics"
    platform.log_dir = infra.supervisor.log_dir
    devstack.wait_http(
        platform.worker_metrics_url,
        alive=lambda: platform.supervisor.procs["worker"].poll() is None,
    )
    return platform


@pytest.fixture(scope="session")
async def ops_seeded(ops_platform):
    from services.platform.seed import seed_demo

    await seed_demo()


@pytest.fixture(scope="session")
def ops_api(ops_platform, ops_seeded) -> str:
    return f"{ops_platform.gateway_url}/api/v1"
