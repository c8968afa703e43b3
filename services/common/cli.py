"""`groupbuy`: the operator's command line (run, migrate, seed, daily jobs)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from datetime import date
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="Community group-buying platform: operator commands", no_args_is_help=True)
console = Console()


def _settings():
    from .settings import Settings, override_settings

    s = Settings()
    override_settings(s)
    return s


@app.command()
def run(host: str = typer.Option("127.0.0.1", help="interface the gateway listens on")) -> None:
    """Start the whole platform; embedded PostgreSQL / broker / payments when none is set."""
    from . import devstack

    data_dir = Path(os.environ.get("DATA_DIR", ".data")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    supervisor = devstack.Supervisor(data_dir / "run" / "main", log_dir=data_dir / "logs")
    supervisor.kill_stale()
    handles = []
    db_url = os.environ.get("DATABASE_URL")
    if not db_url:
        console.print("[bold]DATABASE_URL not set:[/] starting embedded PostgreSQL in .data/pg")
        server_url, handle = devstack.embedded_postgres(data_dir / "pg")
        handles.append(handle)
        db_url = devstack.create_database(server_url, "groupbuy")
    broker = os.environ.get("CELERY_BROKER_URL")
    if not broker:
        console.print("[bold]CELERY_BROKER_URL not set:[/] starting embedded redis-server")
        broker = devstack.embedded_redis(supervisor, data_dir)
    gateway_port = int(os.environ.get("GATEWAY_PORT", "8000"))
    ports = {
        "gateway": gateway_port,
        "catalog": 8101,
        "orders": 8102,
        "leaders": 8103,
        "settlement": 8104,
        "payments": int(os.environ.get("PAYMENTS_PORT", "8420")),
    }
    for s in ("catalog", "orders", "leaders", "settlement"):
        url = os.environ.get(f"{s.upper()}_URL")
        if url:
            ports[s] = int(url.rsplit(":", 1)[1].split("/")[0])
    os.environ.update({"DATABASE_URL": db_url, "CELERY_BROKER_URL": broker})
    payments = os.environ.get("PAYMENTS_API_BASE")
    if not payments:
        console.print("[bold]PAYMENTS_API_BASE not set:[/] starting the payment fake")
        os.environ["PAYMENTS_API_BASE"] = f"http://127.0.0.1:{ports['payments']}"
    _settings()

    def seed() -> None:
        from .seed import seed_demo

        result = asyncio.run(seed_demo())
        console.print(
            f"Demo seeded: sale day {result['sale_date']} published, leaders "
            + ", ".join(f"dev:{n}" for n in result["leaders"])
        )

    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    with console.status("starting services, gateway, worker and beat..."):
        platform = devstack.start_platform(
            data_dir=data_dir,
            database_url=db_url,
            broker_url=broker,
            payments_base=payments,
            ports=ports,
            extra_env={},
            supervisor=supervisor,
            gateway_host=host,
            seed=seed,
            handles=handles,
        )
    gw = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{gateway_port}"
    console.print(f"""
[bold green]Group buying platform is up.[/]
  Gateway      {gw}/api/v1
  Swagger UI   {gw}/docs
  Staff login  curl -X POST {gw}/api/v1/auth/staff/token -d username=staff -d password=staff
  Shopper      curl -X POST {gw}/api/v1/auth/wechat/session -H 'content-type: application/json' -d '{{"code": "dev:alice"}}'
  Logs         {data_dir / "logs"}
Press Ctrl-C to stop.""")
    restarts: dict[str, int] = {}
    try:
        while not stopping:
            time.sleep(0.5)
            for name in platform.supervisor.dead():
                if stopping:
                    break
                restarts[name] = restarts.get(name, 0) + 1
                console.print(f"[yellow]{name} exited; restarting ({restarts[name]})[/]")
                platform.supervisor.procs.pop(name)
                if name in ("catalog", "orders", "leaders", "settlement"):
                    platform.start_service(name)
                elif name == "gateway":
                    platform.start_gateway(host)
                elif name == "worker":
                    platform.start_worker()
                elif name == "beat":
                    platform.start_beat()
    finally:
        console.print("stopping...")
        platform.stop()
        console.print("stopped.")


@app.command()
def migrate(downgrade_to: str = typer.Option(None, help="downgrade every service to this")) -> None:
    """Apply every service's migrations (or downgrade them)."""
    from .migrations import downgrade_all, upgrade_all

    s = _settings()
    if downgrade_to:
        downgrade_all(s.database_url, downgrade_to)
    else:
        upgrade_all(s.database_url)
    console.print("migrations applied")


@app.command("seed-demo")
def seed_demo_cmd() -> None:
    """Seed the demo leaders, products and tomorrow's published sale day (idempotent)."""
    from .seed import seed_demo

    _settings()
    console.print(asyncio.run(seed_demo()))


@app.command("close-day")
def close_day(day: str) -> None:
    """Run the daily cutoff for DATE (YYYY-MM-DD) now."""
    from services.catalog.service import close_sale_day

    from .db import get_db

    _settings()
    try:
        result = asyncio.run(close_sale_day(get_db("catalog"), date.fromisoformat(day)))
    except Exception as e:  # noqa: BLE001
        console.print(f"[red]cutoff failed:[/] {e}")
        sys.exit(1)
    console.print(result)


@app.command("check-ledger")
def check_ledger() -> None:
    """Verify the whole settlement ledger: balanced, non-negative, balances = entries."""
    from services.settlement.ledger import check_invariants

    from .db import get_db

    _settings()

    async def check() -> list[str]:
        db = get_db("settlement")
        try:
            async with db.session() as s:
                return await check_invariants(s)
        finally:
            await db.dispose()

    problems = asyncio.run(check())
    for p in problems:
        console.print(f"[red]{p}[/]")
    if problems:
        sys.exit(1)
    console.print("ledger ok")


if __name__ == "__main__":
    app()
