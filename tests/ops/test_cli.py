"""The operator's command line, run as an operator runs it: a real process against the
suite's real PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import psycopg
import pytest

from services.platform import devstack


def groupbuy(
    *args: str, env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.platform.cli", *args],
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchone()[0]


@pytest.fixture
def scratch_db(infra):
    name = f"{infra.db_name}_scratch"
    url = devstack.create_database(infra.server_url, name, drop_first=True)
    yield url
    devstack.drop_database(infra.server_url, name)


def test_migrate_then_restore_a_backup_reproduces_the_data(
    infra, ops_platform, ops_seeded, scratch_db, tmp_path
):
    source_leaders = _count(infra.database_url, "SELECT count(*) FROM leaders.leaders")
    source_products = _count(infra.database_url, "SELECT count(*) FROM catalog.products")
    assert source_leaders >= 3

    # what the one-shot migration job runs, on an empty database
    done = groupbuy("serve", "migrate", env={"DATABASE_URL": scratch_db})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "migrations applied" in done.stdout
    assert _count(scratch_db, "SELECT count(*) FROM leaders.leaders") == 0

    dump = tmp_path / "nightly" / "groupbuy.dump"
    done = groupbuy("backup", "--output", str(dump), env={"DATABASE_URL": infra.database_url})
    assert done.returncode == 0, done.stdout + done.stderr
    assert dump.stat().st_size > 0
    assert not list(dump.parent.glob("*.partial"))

    # without --yes an operator is asked first; answering no changes nothing
    refused = subprocess.run(
        [sys.executable, "-m", "services.platform.cli", "restore", str(dump)],
        env={**os.environ, "DATABASE_URL": scratch_db},
        input="n\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1
    assert _count(scratch_db, "SELECT count(*) FROM leaders.leaders") == 0

    done = groupbuy("restore", str(dump), "--database-url", scratch_db, "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _count(scratch_db, "SELECT count(*) FROM leaders.leaders") == source_leaders
    assert _count(scratch_db, "SELECT count(*) FROM catalog.products") == source_products


def test_a_failed_backup_exits_1_leaves_no_file_and_never_prints_the_password(tmp_path):
    closed = devstack.free_port()
    url = f"postgresql://ops:Sup3rS3cretPw@127.0.0.1:{closed}/groupbuy"
    out = tmp_path / "b.dump"
    done = groupbuy("backup", "-o", str(out), env={"DATABASE_URL": url})
    assert done.returncode == 1
    assert "dumping" in done.stdout and "failed" in done.stdout
    assert "Sup3rS3cretPw" not in done.stdout + done.stderr
    assert not out.exists()


def test_bad_usage_exits_2():
    assert groupbuy("serve", "billing").returncode == 2
    assert groupbuy("close-day", "tomorrow").returncode == 2
    assert groupbuy("no-such-command").returncode == 2


def test_serve_runs_one_process_of_the_image(infra, tmp_path):
    port = devstack.free_port()
    env = {"PORT": str(port), "DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.platform.cli", "serve", "catalog", "--host", "127.0.0.1"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        devstack.wait_http(f"http://127.0.0.1:{port}/healthz", alive=lambda: proc.poll() is None)
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert "groupbuy_outbox_lag_seconds" in metrics.text
        # the image's HEALTHCHECK finds the process `serve` started
        assert groupbuy("healthcheck", env=env).returncode == 0
    finally:
        proc.terminate()
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        stopped_by_sigterm = proc.poll() is not None
        if not stopped_by_sigterm:
            proc.kill()
            proc.wait(5)
    # exec'd, so the server itself gets the container's SIGTERM and shuts down in time
    # (uvicorn re-raises the signal after its graceful shutdown, hence -SIGTERM)
    assert stopped_by_sigterm
    assert proc.returncode in (0, -signal.SIGTERM)
    assert groupbuy("healthcheck", env=env).returncode == 1


def test_serve_worker_answers_pings_and_serves_its_metrics(infra, tmp_path):
    metrics_port = devstack.free_port()
    env = {
        "DATA_DIR": str(tmp_path),
        "CELERY_QUEUE": f"{infra.queue}-serve",
        "WORKER_METRICS_PORT": str(metrics_port),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "worker-metrics"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.platform.cli", "serve", "worker", "--concurrency", "1"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        devstack.wait_http(
            f"http://127.0.0.1:{metrics_port}/metrics", alive=lambda: proc.poll() is None
        )
        deadline = time.monotonic() + 30
        while groupbuy("healthcheck", env=env).returncode != 0:
            assert time.monotonic() < deadline, "the worker never answered its health ping"
            time.sleep(0.5)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_the_daily_jobs_run_from_the_command_line(infra, ops_platform, ops_seeded):
    for command, expected in (
        ("evaluate-tiers", "change(s)"),
        ("release-commissions", "released"),
        ("reconcile", "no differences"),
        ("check-ledger", "ledger ok"),
    ):
        done = groupbuy(command, env={"DATABASE_URL": infra.database_url})
        assert done.returncode == 0, (command, done.stdout + done.stderr)
        assert expected in done.stdout, (command, done.stdout)
