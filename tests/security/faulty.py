"""A second platform whose every hop goes through the fault-injecting proxy, and the
client a real shopper's app is: it retries a 5xx or a broken connection with the same
Idempotency-Key. Shared by the fault tests; the platform has its own database, queue,
payment fake, clock and processes, so the faults never touch the rest of the suite."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from psycopg.rows import dict_row

from services.common.idempotency import IN_PROGRESS_GRACE
from services.common.payments import PaymentProvider
from services.common.settings import SERVICES
from services.platform import devstack
from tests.conftest import DATA

RETRYABLE = {502, 503, 504}
# how long a restarted service may take to answer again (devstack.wait_http's limit) plus
# how long a claim its predecessor left stays in progress
PATIENCE_S = 60.0 + IN_PROGRESS_GRACE.total_seconds()
# callers give up on a peer or the provider after TIMEOUT_S; a `late` answer comes after
TIMEOUT_S = 2.0
LATE_S = 2.5
PROXIED = (*SERVICES, "payments")


@dataclass
class FaultyPlatform:
    platform: devstack.Platform
    database_url: str
    control_url: str
    payments_url: str
    clock_file: Path
    env: dict[str, str]
    server_url: str
    db_name: str

    @property
    def api(self) -> str:
        return f"{self.platform.gateway_url}/api/v1"

    async def set_rate(self, rate: float) -> dict:
        async with httpx.AsyncClient() as c:
            r = await c.post(f"{self.control_url}/_faults", json={"rate": rate})
        r.raise_for_status()
        return r.json()

    async def faults(self) -> dict:
        async with httpx.AsyncClient() as c:
            r = await c.get(f"{self.control_url}/_faults")
        r.raise_for_status()
        return r.json()

    def advance_clock(self, seconds: float) -> None:
        """Every process of this platform reads its time from this file."""
        current = float(self.clock_file.read_text() or 0) if self.clock_file.exists() else 0.0
        self.clock_file.write_text(str(current + seconds))

    async def rows(self, sql: str, params: dict | None = None) -> list[dict]:
        async with await psycopg.AsyncConnection.connect(
            self.database_url, row_factory=dict_row
        ) as conn:
            cur = await conn.execute(sql, params or {})
            return await cur.fetchall()

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        env = {**self.platform.env, "DATABASE_URL": self.database_url}
        return subprocess.run(
            [str(Path(sys.executable).parent / "groupbuy"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def provider(self) -> PaymentProvider:
        """The payment fake asked directly, not through the proxy."""
        return PaymentProvider(base_url=self.payments_url)


def start_faulty_platform(infra, *, seed: int, name: str = "faults") -> FaultyPlatform:
    run = f"{infra.run_id}-{name}"
    supervisor = devstack.Supervisor(DATA / "run" / run, log_dir=DATA / "logs" / run)
    ports = {
        n: devstack.free_port()
        for n in ("gateway", "catalog", "orders", "leaders", "settlement", "payments")
    }
    proxy_ports = {n: devstack.free_port() for n in PROXIED}
    control = devstack.free_port()
    routes = []
    for n in PROXIED:
        routes += ["--route", f"{n}={proxy_ports[n]}=http://127.0.0.1:{ports[n]}"]
    supervisor.start(
        "faultproxy",
        [sys.executable, "-m", "services.platform.fakes.faultproxy", "--control-port", str(control)]
        + ["--seed", str(seed), "--rate", "0", "--late-s", str(LATE_S)]
        + routes,
        dict(os.environ),
    )
    control_url = f"http://127.0.0.1:{control}"
    db_name = f"groupbuy_test_{run.replace('-', '_')}"
    database_url = devstack.create_database(infra.server_url, db_name, drop_first=True)
    clock_file = DATA / f"clock-{run}"
    clock_file.unlink(missing_ok=True)
    env = {
        **infra.env,
        "CELERY_QUEUE": f"{infra.queue}-{name}",
        "CLOCK_OFFSET_FILE": str(clock_file),
        # an approved payout whose answer was lost is looked for and retried in seconds
        "PAYOUT_RETRY_AFTER_S": "2",
        "PAYOUT_RETRY_INTERVAL_S": "1",
        "REFUND_RETRY_INTERVAL_S": "1",
        "WORKER_METRICS_PORT": "0",
        # the shared PostgreSQL serves other runs too: a smaller burst per process
        "DB_MAX_OVERFLOW": "3",
        "PEER_READ_TIMEOUT_S": str(TIMEOUT_S),
        "PAYMENTS_TIMEOUT_S": str(TIMEOUT_S),
    }
    peers = {f"{s.upper()}_URL": f"http://127.0.0.1:{proxy_ports[s]}" for s in SERVICES}
    peers["PAYMENTS_API_BASE"] = f"http://127.0.0.1:{proxy_ports['payments']}"
    try:
        devstack.wait_http(
            f"{control_url}/_faults",
            alive=lambda: supervisor.procs["faultproxy"].poll() is None,
        )
        platform = devstack.start_platform(
            data_dir=DATA,
            database_url=database_url,
            broker_url=infra.broker_url,
            payments_base=None,
            ports=ports,
            extra_env=env,
            supervisor=supervisor,
            peers=peers,
        )
    except BaseException:
        supervisor.stop_all()
        devstack.drop_database(infra.server_url, db_name)
        raise
    faulty = FaultyPlatform(
        platform=platform,
        database_url=database_url,
        control_url=control_url,
        payments_url=f"http://127.0.0.1:{ports['payments']}",
        clock_file=clock_file,
        env=env,
        server_url=infra.server_url,
        db_name=db_name,
    )
    seeded = faulty.cli("seed-demo")
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    return faulty


def stop_faulty_platform(faulty: FaultyPlatform) -> None:
    faulty.platform.stop()
    faulty.clock_file.unlink(missing_ok=True)
    try:
        devstack.drop_database(faulty.server_url, faulty.db_name)
    except Exception:
        pass


@dataclass
class RetryStats:
    retries: Counter = field(default_factory=Counter)


class Client:
    """A shopper's (or leader's, or staff's) app: on a 5xx or a broken connection it asks
    again, with the same Idempotency-Key for anything that changes state."""

    def __init__(self, base: str, stats: RetryStats, token: str | None = None) -> None:
        self.base = base
        self.token = token
        self.stats = stats
        self.user: dict = {}
        self.http = httpx.AsyncClient(base_url=base, timeout=30)

    async def call(self, method: str, path: str, *, key: str | None = None, **kw) -> httpx.Response:
        headers = dict(kw.pop("headers", None) or {})
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        if method in ("POST", "PUT"):
            headers["idempotency-key"] = key or uuid.uuid4().hex
        last: object = None
        # a patient client: it keeps trying for as long as the platform may take to come
        # back, not a count of tries (60 tries, ~30 s, can run out on a loaded machine
        # while a restarted service is still starting and its stale claim in its grace)
        deadline = time.monotonic() + PATIENCE_S
        attempt = 0
        while True:
            attempt += 1
            try:
                r = await self.http.request(method, path, headers=headers, **kw)
            except httpx.TransportError as e:
                last = e
            else:
                busy = r.status_code == 409 and b"idempotency_in_progress" in r.content
                if r.status_code not in RETRYABLE and not busy:
                    return r
                last = r
            self.stats.retries[f"{method} {path.split('/')[1]}"] += 1
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{method} {path} still failing after {attempt} tries in {PATIENCE_S} s: "
                    f"{last!r}"
                )
            await asyncio.sleep(min(0.05 * 2**attempt, 0.5))

    async def aclose(self) -> None:
        await self.http.aclose()


async def login(base: str, stats: RetryStats, code: str) -> Client:
    c = Client(base, stats)
    r = await c.call("POST", "/auth/wechat/session", json={"code": f"dev:{code}"})
    assert r.status_code == 200, r.text
    c.token = r.json()["access_token"]
    c.user = r.json()["user"]
    return c


async def staff_login(base: str, stats: RetryStats) -> Client:
    c = Client(base, stats)
    r = await c.call("POST", "/auth/staff/token", data={"username": "staff", "password": "staff"})
    assert r.status_code == 200, r.text
    c.token = r.json()["access_token"]
    return c
