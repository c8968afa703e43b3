"""`groupbuy`: the operator's command line (run, serve, migrate, seed, daily jobs, backup).

Exit codes: 0 done; 1 the operation failed (database unreachable, a tool refused);
2 bad usage (unknown command or process, malformed argument), from typer itself.

A command imports the platform's code it needs when it runs ("on use" below), never at
start-up: `groupbuy healthcheck` runs every 15 s under a 5 s timeout in every container,
and importing the kernel's database and HTTP layers takes a second or more, every
service several.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, date, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

app = typer.Typer(help="Community group-buying platform: operator commands", no_args_is_help=True)
console = Console()


def _run(coro):
    """Run one command's work, then close the pooled HTTP sessions it opened (the
    provider, the peers), so the loop does not end with them open."""

    async def run():
        from services.common.http import close_all_sessions  # on use

        try:
            return await coro
        finally:
            await close_all_sessions()

    return asyncio.run(run())


def _settings():
    from services.common.settings import Settings, override_settings  # on use

    s = Settings()
    override_settings(s)
    return s


@app.command()
def run(host: str = typer.Option("127.0.0.1", help="interface the gateway listens on")) -> None:
    """Start the whole platform; embedded PostgreSQL / broker / payments when none is set."""
    from . import devstack  # on use

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
        from .seed import seed_demo  # on use

        result = _run(seed_demo())
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


def _progress(**kw) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        **kw,
    )


def _db(service: str):
    from services.common.db import get_db  # on use

    return get_db(service)


def _fail(message: str) -> None:
    console.print(f"[red]{message}[/]")
    raise typer.Exit(1)


def _masked(url: str) -> str:
    """A database URL fit for a terminal or a log: the password replaced."""
    from sqlalchemy.engine import make_url  # on use

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - unparseable: show nothing of it
        return "<database url>"


def _libpq_url(url: str) -> str:
    from services.common.db import driver_url  # on use

    return driver_url(url, "psycopg").replace("postgresql+psycopg://", "postgresql://", 1)


PROCESSES = ("gateway", "catalog", "orders", "leaders", "settlement", "worker", "beat", "migrate")
HTTP_PROCESSES = ("gateway", "catalog", "orders", "leaders", "settlement")


def _serve_marker() -> Path:
    return Path(os.environ.get("DATA_DIR", ".data")) / "serve.json"


@app.command()
def serve(
    process: str = typer.Argument(..., help=" | ".join(PROCESSES)),
    host: str = typer.Option("0.0.0.0", help="interface an HTTP process listens on"),
    port: int = typer.Option(8000, envvar="PORT", help="port an HTTP process listens on"),
    concurrency: int = typer.Option(2, help="worker: task processes"),
) -> None:
    """Run one process of the platform in the foreground (what each container runs)."""
    if process not in PROCESSES:
        raise typer.BadParameter(f"one of {', '.join(PROCESSES)}", param_hint="PROCESS")
    if process == "migrate":
        return migrate(downgrade_to=None)
    s = _settings()
    if process in ("worker", "beat"):
        argv = [sys.executable, "-m", "celery", "-A", "services.platform.worker:celery"]
        if process == "worker":
            if s.worker_metrics_port:
                # the forked task processes share their counters through this directory
                os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "/tmp/groupbuy-worker-metrics")
            argv += ["worker", "-Q", s.celery_queue, "--concurrency", str(concurrency)]
            argv += ["--without-gossip", "--without-mingle", "--loglevel", "WARNING"]
        else:
            schedule = Path(s.data_dir) / "celerybeat-schedule"
            schedule.parent.mkdir(parents=True, exist_ok=True)
            argv += ["beat", "--schedule", str(schedule), "--loglevel", "WARNING"]
    else:
        target = "gateway.app:app" if process == "gateway" else f"services.{process}.app:app"
        argv = [sys.executable, "-m", "uvicorn", target, "--host", host, "--port", str(port)]
        argv += ["--no-access-log", "--log-level", "warning", "--proxy-headers"]
    # execv keeps the pid: unique even with several workers on one host
    node = f"worker-{os.getpid()}@{socket.gethostname()}"
    if process == "worker":
        argv += ["--hostname", node]
    marker = _serve_marker()
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"process": process, "port": port, "node": node}))
    # exec: the process gets the container's signals directly (clean SIGTERM shutdown)
    os.execv(argv[0], argv)


@app.command()
def healthcheck() -> None:
    """The image's HEALTHCHECK: does the process `serve` started here answer?"""
    marker = _serve_marker()
    if not marker.exists():
        _fail("no process was started with `groupbuy serve` in this container")
    info = json.loads(marker.read_text())
    try:
        if info["process"] in HTTP_PROCESSES:
            with urllib.request.urlopen(f"http://127.0.0.1:{info['port']}/healthz", timeout=3):
                pass
        elif info["process"] == "worker":
            _settings()
            from services.common.broker import celery  # on use

            if not celery.control.ping(destination=[info["node"]], timeout=3.0):
                _fail(f"{info['node']} does not answer a ping")
    except OSError as e:
        _fail(f"{info['process']} is not healthy: {e}")
    # beat and migrate: the container lives exactly as long as the process does


@app.command()
def migrate(
    downgrade_to: str | None = typer.Option(None, help="downgrade every service to this"),
) -> None:
    """Apply every service's migrations (or downgrade them)."""
    from alembic import command  # on use

    from services.common.settings import SERVICES  # on use

    from .migrations import alembic_config  # on use

    s = _settings()
    order = list(reversed(SERVICES)) if downgrade_to else list(SERVICES)
    try:
        with _progress() as progress:
            bar = progress.add_task("migrating", total=len(order))
            for service in order:
                progress.update(bar, description=f"migrating {service}")
                cfg = alembic_config(service, s.database_url_for(service))
                if downgrade_to:
                    command.downgrade(cfg, downgrade_to)
                else:
                    command.upgrade(cfg, "head")
                progress.advance(bar)
    except Exception as e:  # noqa: BLE001
        _fail(f"migration failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
    console.print("migrations applied")


@app.command("seed-demo")
def seed_demo_cmd() -> None:
    """Seed the demo leaders, products and tomorrow's published sale day (idempotent)."""
    from .seed import seed_demo  # on use

    _settings()
    with console.status("seeding demo data..."):
        result = _run(seed_demo())
    console.print(result)


@app.command("close-day")
def close_day(day: str = typer.Argument(..., help="sale date, YYYY-MM-DD")) -> None:
    """Run the daily cutoff for DATE (YYYY-MM-DD) now."""
    from services.catalog.service import close_sale_day  # on use

    try:
        sale_date = date.fromisoformat(day)
    except ValueError:
        raise typer.BadParameter("expected YYYY-MM-DD", param_hint="DAY") from None
    _settings()
    try:
        with console.status(f"closing sale day {sale_date}..."):
            result = _run(close_sale_day(_db("catalog"), sale_date))
    except Exception as e:  # noqa: BLE001
        _fail(f"cutoff failed: {e}")
    console.print(result)


@app.command("evaluate-tiers")
def evaluate_tiers() -> None:
    """Run today's tier evaluation now (once per leader per day, like the schedule)."""
    from services.leaders.evaluation import run_evaluations  # on use

    _settings()
    try:
        with console.status("evaluating leaders' tiers..."):
            changes = _run(run_evaluations(_db("leaders")))
    except Exception as e:  # noqa: BLE001
        _fail(f"evaluation failed: {e}")
    for change in changes:
        console.print(change)
    console.print(f"{len(changes)} change(s)")


@app.command("release-commissions")
def release_commissions() -> None:
    """Release commissions whose after-sales window has passed (pending -> available)."""
    from services.settlement.service import release_due  # on use

    _settings()
    try:
        with console.status("releasing matured commissions..."):
            released = _run(release_due(_db("settlement")))
    except Exception as e:  # noqa: BLE001
        _fail(f"release failed: {e}")
    console.print(f"{released} commission(s) released")


@app.command()
def reconcile() -> None:
    """Reconcile ledger payouts with the provider's transfers; exit 1 on any difference."""
    from services.settlement.tasks import reconcile_and_warn  # on use

    _settings()
    try:
        with console.status("reconciling with the payment provider..."):
            report = _run(reconcile_and_warn(_db("settlement")))
    except Exception as e:  # noqa: BLE001
        _fail(f"reconciliation failed: {e}")
    for diff in report["differences"]:
        console.print(f"[red]{diff}[/]")
    if report["differences"]:
        sys.exit(1)
    console.print("no differences")


@app.command("check-ledger")
def check_ledger() -> None:
    """Verify the whole settlement ledger: balanced, non-negative, balances = entries."""
    from services.settlement.ledger import check_invariants  # on use

    _settings()

    async def check() -> list[str]:
        db = _db("settlement")
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


def _pg_tool(name: str) -> str:
    """PG_BIN_DIR if set; else the newest of PATH's and the embedded PostgreSQL wheel's
    binaries (pg_dump refuses a server newer than itself, and dumps older ones fine)."""
    if os.environ.get("PG_BIN_DIR"):
        return str(Path(os.environ["PG_BIN_DIR"]) / name)
    candidates = [shutil.which(name)]
    try:
        import pgserver  # optional, and importing it warns when XDG_RUNTIME_DIR is unset

        candidates.append(str(Path(pgserver.__file__).parent / "pginstall" / "bin" / name))
    except ImportError:
        pass

    def major(path: str) -> int:
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
        except OSError:
            return -1
        found = re.search(r"(\d+)(?:\.\d+)?", out)
        return int(found.group(1)) if found else -1

    usable = [(major(c), c) for c in candidates if c and Path(c).exists()]
    usable = [u for u in usable if u[0] >= 0]
    if not usable:
        _fail(f"{name} not found: install the PostgreSQL client tools or set PG_BIN_DIR")
    return max(usable)[1]


def _run_pg_tool(argv: list[str], what: str, url: str) -> None:
    """Run pg_dump / pg_restore; the password goes by environment, never on the command
    line (where `ps` shows it) nor into our output."""
    from sqlalchemy.engine import make_url  # on use

    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    bare = parsed.set(password=None).render_as_string(hide_password=False)
    with _progress(transient=True) as progress:
        progress.add_task(what, total=None)
        done = subprocess.run([*argv, "--dbname", bare], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        err = (done.stderr or "").strip()
        if parsed.password:
            err = err.replace(str(parsed.password), "***")
        _fail(f"{what} failed ({Path(argv[0]).name} exit {done.returncode}): {err[-800:]}")


@app.command()
def backup(
    output: Path = typer.Option(..., "--output", "-o", help="dump file to write"),
    database_url: str = typer.Option(None, help="defaults to DATABASE_URL"),
) -> None:
    """Dump the whole database (every service schema) to a file (pg_dump custom format)."""
    url = _libpq_url(database_url or _settings().database_url)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    argv = [_pg_tool("pg_dump"), "--format=custom", "--no-owner", "--file", str(partial)]
    _run_pg_tool(argv, f"dumping {_masked(url)}", url)
    # renamed only when complete, so a failed dump never looks like a good backup
    partial.replace(output)
    console.print(f"[green]backup written:[/] {output} ({output.stat().st_size} bytes)")


@app.command()
def restore(
    dump: Path = typer.Argument(..., exists=True, dir_okay=False, help="a file from `backup`"),
    database_url: str = typer.Option(None, help="defaults to DATABASE_URL"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
) -> None:
    """Restore a `backup` file into the database, replacing the objects it holds."""
    url = _libpq_url(database_url or _settings().database_url)
    if not yes:
        typer.confirm(f"Replace the data in {_masked(url)} with {dump}?", abort=True)
    argv = [_pg_tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--single-transaction"]
    _run_pg_tool([*argv, str(dump)], f"restoring into {_masked(url)}", url)
    console.print(f"[green]restored[/] {dump} into {_masked(url)}")


@app.command()
def drill(
    database_url: str = typer.Option(None, help="the source; defaults to DATABASE_URL"),
    output: Path = typer.Option(
        None, "--output", "-o", help="keep the dump here (else a temporary file)"
    ),
    keep: bool = typer.Option(False, help="keep the restored database instead of dropping it"),
) -> None:
    """The backup/restore drill: dump, restore into a NEW database, check the ledger's
    invariants there and compare row counts and balances with the source (exit 1 on any
    difference)."""
    from sqlalchemy.engine import make_url  # on use

    from . import devstack  # on use
    from . import drill as d  # on use

    url = _libpq_url(database_url or _settings().database_url)
    source_name = make_url(url).database or "groupbuy"
    target_name = f"{source_name}_drill_{datetime.now(UTC):%Y%m%d%H%M%S}"
    with tempfile.TemporaryDirectory(prefix="groupbuy-drill-") as tmp:
        dump = output or Path(tmp) / "drill.dump"
        dump.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            conn, snapshot = d.export_snapshot(url)
        except Exception as e:  # noqa: BLE001 - any connection failure ends the drill
            _fail(f"cannot open {_masked(url)}: {type(e).__name__}")
        try:
            source = d.read_figures(conn)
            argv = [_pg_tool("pg_dump"), "--format=custom", "--no-owner"]
            argv += ["--snapshot", snapshot, "--file", str(dump)]
            _run_pg_tool(argv, f"dumping {_masked(url)}", url)
        finally:
            conn.close()
        dumped = time.monotonic()
        target = devstack.create_database(url, target_name)
        try:
            argv = [_pg_tool("pg_restore"), "--no-owner", "--exit-on-error", "--single-transaction"]
            _run_pg_tool([*argv, str(dump)], f"restoring into {_masked(target)}", target)
            restored_at = time.monotonic()
            invariants = asyncio.run(d.ledger_problems(target))
            with psycopg_connect(target) as conn:
                restored = d.read_figures(conn)
            differences = d.compare(source, restored)
        finally:
            if not keep:
                devstack.drop_database(url, target_name)
        checked = time.monotonic()
    console.print(
        f"dump: {dump.name if output is None else dump} of {_masked(url)}, "
        f"{len(source.counts)} tables, {source.rows} rows, {len(source.balances)} ledger "
        f"accounts ({dumped - started:.1f} s)"
    )
    console.print(
        f"restore into new database {target_name} ({restored_at - dumped:.1f} s)"
        + (", kept" if keep else ", dropped after the checks")
    )
    for p in invariants:
        console.print(f"[red]ledger: {p}[/]")
    console.print(
        "ledger invariants hold on the restored copy"
        if not invariants
        else f"[red]{len(invariants)} ledger invariant(s) broken on the restored copy[/]"
    )
    for p in differences:
        console.print(f"[red]{p}[/]")
    console.print(
        f"{len(restored.counts)} tables and {len(restored.balances)} balances equal the source"
        if not differences
        else f"[red]{len(differences)} difference(s) from the source[/]"
    )
    console.print(f"checks {checked - restored_at:.1f} s, drill {checked - started:.1f} s")
    if invariants or differences:
        raise typer.Exit(1)
    console.print("[green]drill passed[/]")


def psycopg_connect(url: str):
    import psycopg  # on use

    return psycopg.connect(url, connect_timeout=10)


if __name__ == "__main__":
    app()
