"""`make bench`: the platform against the raw database limit, in one run.

Starts the platform as `make run` does (a fresh database on the same PostgreSQL), runs
each scenario, and measures a raw-SQL baseline of the same work on the same server in
the same run, so every result is a ratio as well as a time. Writes
bench/results/<date>.json and appends a Markdown table to bench/RESULTS.md.

The load driver is an asyncio + aiohttp client rather than locust: the scenarios need
exact request counts (5,000 racers for 500 units), tokens minted in-process for
thousands of shoppers, and latency percentiles of a fixed number of requests; an async
driver on one core does that without gevent and with less overhead per request. aiohttp
rather than httpx for the same reason the platform uses it: the driver shares the 2
cores with what it measures, and httpx's pool costs more per request the more
connections it holds (py-spy).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform as pyplatform
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
console = Console()
app = typer.Typer(add_completion=False)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(q / 100 * (len(values) - 1))))
    return values[k]


def ratio(value: float, raw: float) -> float | None:
    """How many times the raw baseline's time (or rate) a result is; None without a baseline."""
    if not raw or raw != raw or value != value:
        return None
    return round(value / raw, 2)


# the release job's ledger move for every due commission, as one statement: claim the
# lines, one transaction per leader, its pending -> available entries, the balances
RAW_RELEASE_SQL = """
WITH rel AS (
    UPDATE settlement.commissions SET status = 'available', released_at = now()
    WHERE status = 'pending' AND available_at <= now()
    RETURNING leader_id, amount_fen - reversed_fen AS amount
), per AS (
    SELECT leader_id, sum(amount) AS amount, count(*) AS n FROM rel GROUP BY leader_id
), tx AS (
    INSERT INTO settlement.ledger_transactions (reference, kind, memo, created_at)
    SELECT 'raw-release:' || leader_id, 'commission_released', '', now() FROM per
    RETURNING id, split_part(reference, ':', 2)::int AS leader_id
), ent AS (
    INSERT INTO settlement.ledger_entries (transaction_id, account_id, amount_fen, currency,
        created_at)
    SELECT tx.id, a.id, CASE WHEN a.kind = 'pending' THEN -per.amount ELSE per.amount END,
        'CNY', now()
    FROM tx JOIN per USING (leader_id)
    JOIN settlement.accounts a ON a.leader_id = per.leader_id AND a.kind IN ('pending', 'available')
    RETURNING account_id, amount_fen
), bal AS (
    UPDATE settlement.accounts a SET balance_fen = a.balance_fen + s.total
    FROM (SELECT account_id, sum(amount_fen) AS total FROM ent GROUP BY account_id) s
    WHERE a.id = s.account_id RETURNING a.id
)
SELECT (SELECT coalesce(sum(n), 0) FROM per) + 0 * (SELECT count(*) FROM bal)
"""


# scenario 5's raw limit: the evaluation's metrics for every leader, one plain aggregate
RAW_TIER_METRICS_SQL = """
WITH o AS (
    SELECT f.leader_id, f.shopper_id,
        f.total_fen - GREATEST(f.refunded_fen, COALESCE(r.refunded, 0)) AS net_fen
    FROM leaders.order_facts f
    LEFT JOIN (SELECT order_id, sum(amount_fen) AS refunded FROM leaders.refund_facts
        GROUP BY order_id) r ON r.order_id = f.order_id
    WHERE f.paid_at >= $1 AND f.paid_at < $3 AND f.cancelled_at IS NULL
), paid AS (
    SELECT leader_id, sum(GREATEST(net_fen, 0)) AS gmv, count(*) AS orders,
        count(DISTINCT shopper_id) FILTER (WHERE net_fen > 0) AS buyers
    FROM o GROUP BY leader_id
), completed AS (
    SELECT leader_id, count(*) AS n FROM leaders.order_facts
    WHERE completed_at >= $1 AND completed_at < $3 GROUP BY leader_id
), complaints AS (
    SELECT leader_id, count(*) AS n FROM leaders.complaints
    WHERE status = 'upheld' AND created_at >= $2 AND created_at < $3 GROUP BY leader_id
), trainings AS (
    SELECT a.leader_id, count(*) AS n FROM leaders.training_attendance a
    JOIN leaders.training_sessions t ON t.id = a.session_id
    WHERE t.kind = 'regular' AND t.starts_at >= $1 AND t.starts_at < $3 GROUP BY a.leader_id
)
SELECT l.id, p.gmv, p.buyers, p.orders, c.n, k.n, t.n FROM leaders.leaders l
LEFT JOIN paid p ON p.leader_id = l.id LEFT JOIN completed c ON c.leader_id = l.id
LEFT JOIN complaints k ON k.leader_id = l.id LEFT JOIN trainings t ON t.leader_id = l.id
WHERE l.status = 'active'
"""


# scenario 3's second limit: the close's writes in plain SQL ($1 the day, $2 the failing deal)
RAW_CUTOFF_WRITES_SQL = """
WITH cancelled AS (
    UPDATE orders.order_lines l SET status = 'cancelled', refunded_quantity = l.quantity,
        refunded_fen = l.unit_price_fen * l.quantity
    FROM orders.orders o WHERE l.order_id = o.id AND o.sale_date = $1 AND o.status = 'paid'
        AND l.status = 'active' AND l.deal_id = $2
    RETURNING l.order_id, l.unit_price_fen * l.quantity AS amount
), refunds AS (
    INSERT INTO orders.refunds (order_id, reason, source_ref, amount_fen, lines, status,
        attempts, created_at)
    SELECT order_id, 'group_threshold_missed', 'raw', sum(amount), '[]'::jsonb, 'pending', 0,
        now() FROM cancelled GROUP BY order_id RETURNING order_id
), lists AS (
    INSERT INTO orders.delivery_lists (sale_date, pickup_date, leader_id, status, created_at)
    SELECT DISTINCT sale_date, pickup_date, leader_id, 'pending', now() FROM orders.orders
    WHERE sale_date = $1 AND status = 'paid'
    ON CONFLICT ON CONSTRAINT uq_delivery_lists_day_leader DO NOTHING RETURNING id
), moved AS (
    UPDATE orders.orders o SET status = CASE WHEN o.id IN (SELECT order_id FROM cancelled)
        THEN 'cancelled' ELSE 'confirmed' END
    WHERE o.sale_date = $1 AND o.status = 'paid' RETURNING o.id, o.status
)
INSERT INTO orders.outbox (id, topic, payload, created_at)
SELECT gen_random_uuid(), 'order.' || status, jsonb_build_object('order_id', id), now()
FROM moved
"""


async def warm(db) -> None:
    """Open the service's pool before timing its job: a worker runs jobs on a warm pool."""
    from sqlalchemy import text

    async with db.session() as s:
        await s.execute(text("SELECT 1"))


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": pyplatform.python_version(),
        "os": pyplatform.platform(),
    }


def rss_peak_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of a process and its children, in MB."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total = max(total, int(line.split()[1]))
        except OSError:
            continue
    return round(total / 1024, 1)


class Answer:
    def __init__(self, status: int, body: bytes) -> None:
        self.status_code, self.content = status, body

    def json(self):
        return json.loads(self.content)


class Driver:
    """The load driver's client: `post(path, headers=, json=)` with a pooled session."""

    def __init__(self, base: str, connections: int, timeout: float) -> None:
        self.base, self.connections, self.timeout = base.rstrip("/"), connections, timeout

    async def __aenter__(self) -> Driver:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections, keepalive_timeout=4),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.close()

    async def post(self, path: str, headers: dict, json: dict) -> Answer:
        async with self.session.post(self.base + path, headers=headers, json=json) as r:
            return Answer(r.status, await r.read())


class Bench:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.results: dict = {
            "started_at": datetime.now(UTC).isoformat(),
            "quick": quick,
            "machine": machine(),
            "scenarios": {},
        }

    # --- platform -------------------------------------------------------------------------------
    def start(self) -> None:
        from services.common.settings import Settings, override_settings
        from services.platform import devstack

        data = ROOT / ".data" / "bench"
        self.handles: list = []
        self.supervisor = devstack.Supervisor(data / "run", log_dir=data / "logs")
        self.supervisor.kill_stale()
        server = os.environ.get("DATABASE_URL") or devstack.local_postgres_url()
        if server is None:
            server, handle = devstack.embedded_postgres(data / "pg")
            self.handles.append(handle)
        self.server = devstack.with_database(server, "postgres")
        self.db_name = f"groupbuy_bench_{uuid.uuid4().hex[:6]}"
        self.db_url = devstack.create_database(self.server, self.db_name, drop_first=True)
        broker = (
            os.environ.get("CELERY_BROKER_URL")
            or devstack.local_redis_url()
            or devstack.embedded_redis(self.supervisor, data)
        )
        ports = {
            n: devstack.free_port()
            for n in ("gateway", "catalog", "orders", "leaders", "settlement", "payments")
        }
        env = {
            "ENVIRONMENT": "test",
            "CELERY_QUEUE": f"bench-{self.db_name}",
            "LOG_LEVEL": "WARNING",
            "RATE_LIMIT_PER_MINUTE": "100000000",
            "AUTH_RATE_LIMIT_PER_MINUTE": "100000000",
            # the server allows 100 connections, shared with whatever else runs on it
            "DB_POOL_SIZE": "12",
            "DB_MAX_OVERFLOW": "0",
        }
        os.environ.update(env)
        os.environ["DATABASE_URL"] = self.db_url
        os.environ["CELERY_BROKER_URL"] = broker
        os.environ["PAYMENTS_API_BASE"] = f"http://127.0.0.1:{ports['payments']}"
        for s in ("catalog", "orders", "leaders", "settlement"):
            os.environ[f"{s.upper()}_URL"] = f"http://127.0.0.1:{ports[s]}"
        override_settings(Settings())
        with console.status("starting the platform (as make run does)..."):
            self.platform = devstack.start_platform(
                data_dir=data,
                database_url=self.db_url,
                broker_url=broker,
                payments_base=None,
                ports=ports,
                extra_env=env,
                supervisor=self.supervisor,
                handles=self.handles,
            )
        self.base = f"{self.platform.gateway_url}/api/v1"
        self.dsn = self.db_url

    def stop(self) -> None:
        from services.platform import devstack

        self.platform.stop()
        try:
            devstack.drop_database(self.server, self.db_name)
        except Exception:
            pass

    # --- fixtures made straight in the database (setup is not what we measure) -------------------
    async def setup_day(
        self, conn, deals: int, stock: int, limit: int = 5, threshold: int = 0
    ) -> tuple[str, list[int]]:
        from services.catalog.service import cutoff_for

        day = (datetime.now(UTC) + timedelta(days=2 + int(time.time()) % 300)).date()
        while await conn.fetchval("SELECT 1 FROM catalog.sale_days WHERE sale_date = $1", day):
            day += timedelta(days=1)
        await conn.execute(
            "INSERT INTO catalog.sale_days (sale_date, status, cutoff_at, pickup_date, "
            "published_at, created_at) VALUES ($1, 'published', $2, $3, now(), now())",
            day,
            cutoff_for(day),
            day + timedelta(days=1),
        )
        ids = []
        tag = uuid.uuid4().hex[:6]
        for i in range(deals):
            pid = await conn.fetchval(
                "INSERT INTO catalog.products (sku, name, category, list_price_fen, description, "
                "image_url, created_at) VALUES ($1, $2, 'fresh', 2000, '', '', now()) RETURNING id",
                f"B-{tag}-{i}",
                f"Bench product {i}",
            )
            ids.append(
                await conn.fetchval(
                    "INSERT INTO catalog.deals (sale_date, product_id, group_price_fen, list_price_fen,"
                    " stock, reserved, per_shopper_limit, group_threshold, outcome, created_at) VALUES "
                    "($1, $2, 990, 2000, $3, 0, $4, $5, 'open', now()) RETURNING id",
                    day,
                    pid,
                    stock,
                    limit,
                    threshold,
                )
            )
        return day.isoformat(), ids

    async def make_leaders(self, conn, n: int) -> list[int]:
        tag = uuid.uuid4().hex[:6]
        rows = await conn.fetch(
            "WITH u AS (INSERT INTO leaders.users (external_id, display_name, roles, created_at) "
            "SELECT 'bench:' || $1 || ':leader:' || g, 'l' || g, ARRAY['shopper'], now() "
            "FROM generate_series(1, $2) g RETURNING id) "
            "INSERT INTO leaders.leaders (user_id, status, tier, community_name, pickup_address, "
            "pickup_hours, phone, group_size, created_at, tier_since) SELECT id, 'active', "
            "'standard', 'c', 'a', '', '', 300, now(), now() FROM u RETURNING id",
            tag,
            n,
        )
        return [r["id"] for r in rows]

    async def make_shoppers(self, conn, n: int, leader_ids: list[int]) -> list[str]:
        from services.common.auth import issue_token

        tag = uuid.uuid4().hex[:6]
        rows = await conn.fetch(
            "INSERT INTO leaders.users (external_id, display_name, roles, bound_leader_id, "
            "created_at) SELECT 'bench:' || $1 || ':' || g, 's' || g, ARRAY['shopper'], "
            "($3::int[])[1 + g % array_length($3::int[], 1)], now() "
            "FROM generate_series(1, $2) g RETURNING id",
            tag,
            n,
            leader_ids,
        )
        return [issue_token(r["id"], ["shopper"]) for r in rows]

    # --- scenario 1: order placement through the gateway -----------------------------------------
    async def scenario_orders(self) -> dict:
        concurrency = int(os.environ.get("BENCH_SHOPPERS", "16" if self.quick else "64"))
        per_shopper = 5 if self.quick else 15
        conn = await asyncpg.connect(self.dsn)
        try:
            leaders = await self.make_leaders(conn, 10)
            day, deals = await self.setup_day(conn, 8, 10_000_000, limit=1_000_000)
            tokens = await self.make_shoppers(conn, concurrency, leaders)
            raw = await self.raw_order_baseline(conn, deals, concurrency * per_shopper)
        finally:
            await conn.close()
        place, pay = [], []
        errors = 0
        placed: dict[int, list[int]] = {}
        async with Driver(self.base, connections=concurrency + 10, timeout=30) as http:
            with self.progress() as prog:
                task = prog.add_task("scenario 1: orders", total=2 * concurrency * per_shopper)

                # phase 1, what the raw baseline does: every shopper places orders back to
                # back (stock held, order recorded), nothing else running
                async def place_orders(i: int, token: str) -> None:
                    nonlocal errors
                    h = {"authorization": f"Bearer {token}"}
                    for k in range(per_shopper):
                        t0 = time.perf_counter()
                        r = await http.post(
                            "/orders",
                            headers=h,
                            json={
                                "items": [{"deal_id": deals[(i + k) % len(deals)], "quantity": 1}]
                            },
                        )
                        place.append(time.perf_counter() - t0)
                        if r.status_code == 201:
                            placed.setdefault(i, []).append(r.json()["id"])
                        else:
                            errors += 1
                        prog.advance(task)

                # phase 2: each shopper pays for their orders (two provider calls each,
                # and the provider's webhook back through the gateway)
                async def pay_orders(i: int, token: str) -> None:
                    nonlocal errors
                    h = {"authorization": f"Bearer {token}"}
                    for order_id in placed.get(i, []):
                        t0 = time.perf_counter()
                        r = await http.post(
                            f"/orders/{order_id}/pay",
                            headers=h,
                            json={"payment_method": "pm_card_visa"},
                        )
                        pay.append(time.perf_counter() - t0)
                        if r.status_code != 200:
                            errors += 1
                        prog.advance(task)

                # warm-up, untimed, as the raw baseline has: one order per shopper opens the
                # pools' connections and prepares the statements, and copies each (new)
                # shopper's leader into orders (service/leaders.py)
                async def warm_up(i: int, token: str) -> None:
                    r = await http.post(
                        "/orders",
                        headers={"authorization": f"Bearer {token}"},
                        json={"items": [{"deal_id": deals[i % len(deals)], "quantity": 1}]},
                    )
                    assert r.status_code == 201, r.json()

                await asyncio.gather(*(warm_up(i, t) for i, t in enumerate(tokens)))
                started = time.perf_counter()
                await asyncio.gather(*(place_orders(i, t) for i, t in enumerate(tokens)))
                placing = time.perf_counter() - started
                t0 = time.perf_counter()
                await asyncio.gather(*(pay_orders(i, t) for i, t in enumerate(tokens)))
                paying = time.perf_counter() - t0
            peak_place_rate = len(place) / placing
            # p99 at half the peak rate: an open-loop run at rate/2
            half = await self.open_loop(
                http, tokens, deals, rate=peak_place_rate / 2, seconds=5 if self.quick else 15
            )
        memory = {
            name: rss_peak_mb(proc.pid)
            for name, proc in self.platform.supervisor.procs.items()
            if name in ("gateway", "catalog", "orders", "leaders", "settlement", "worker")
        }
        orders_per_s = len(pay) / (placing + paying)
        return {
            "command": "make bench",
            "shoppers": concurrency,
            "orders": len(place),
            "errors": errors,
            "orders_placed_and_paid_per_s": round(orders_per_s, 1),
            "payments_per_s": round(len(pay) / paying, 1) if paying else None,
            "placement_latency_ms": {q: round(pct(place, q) * 1000, 1) for q in (50, 95, 99)},
            "payment_latency_ms": {q: round(pct(pay, q) * 1000, 1) for q in (50, 95, 99)},
            # measured: orders placed / wall-clock time of the placing phase
            "placement_only_peak_per_s": round(peak_place_rate, 1),
            "raw_sql_orders_per_s": round(raw, 1),
            "ratio_to_raw": round(peak_place_rate / raw, 3) if raw else None,
            "target_ratio": 0.25,
            "half_peak": half,
            "target_p99_ms_at_half_peak": 100,
            "peak_rss_mb": memory,
            "target_rss_mb": 150,
        }

    async def open_loop(self, http, tokens, deals, rate: float, seconds: int) -> dict:
        lat: list[float] = []
        statuses: dict[int, int] = {}
        n = max(1, int(rate * seconds))
        interval = 1.0 / rate if rate > 0 else 0.1

        async def one(i: int) -> None:
            t0 = time.perf_counter()
            r = await http.post(
                "/orders",
                headers={"authorization": f"Bearer {tokens[i % len(tokens)]}"},
                json={"items": [{"deal_id": deals[i % len(deals)], "quantity": 1}]},
            )
            lat.append(time.perf_counter() - t0)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        tasks = []
        start = time.perf_counter()
        for i in range(n):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        return {
            "rate_per_s": round(rate, 1),
            "requests": n,
            "statuses": statuses,
            "p50_ms": round(pct(lat, 50) * 1000, 1),
            "p99_ms": round(pct(lat, 99) * 1000, 1),
        }

    async def raw_order_baseline(self, conn, deals: list[int], n: int) -> float:
        """The same stock reservation and inserts an order makes, straight with asyncpg,
        over the same deals the shoppers order from."""
        pool = await asyncpg.create_pool(self.dsn, min_size=8, max_size=8)
        per = max(1, n // 8)

        async def worker(w: int, n: int) -> None:
            async with pool.acquire() as c:
                for k in range(n):
                    day_deal = deals[(w + k) % len(deals)]
                    async with c.transaction():
                        await c.execute(
                            "UPDATE catalog.deals SET reserved = reserved + 1 "
                            "WHERE id = $1 AND reserved + 1 <= stock",
                            day_deal,
                        )
                        await c.execute(
                            "INSERT INTO catalog.reservations (order_id, deal_id, shopper_id, "
                            "quantity, status, created_at) VALUES (nextval('orders.orders_id_seq')"
                            ", $1, $2, 1, 'held', now())",
                            day_deal,
                            w,
                        )
                        oid = await c.fetchval(
                            "INSERT INTO orders.orders (shopper_id, leader_id, leader_tier, "
                            "commission_rate, sale_date, pickup_date, status, total_fen, "
                            "refunded_fen, currency, pay_attempts, expires_at, created_at) VALUES "
                            "($1, 1, 'standard', 0.12, current_date, current_date + 1, "
                            "'cancelled', 990, 0, 'CNY', 0, now(), now()) RETURNING id",
                            w,
                        )
                        await c.execute(
                            "INSERT INTO orders.order_lines (order_id, deal_id, product_id, "
                            "product_name, category, unit_price_fen, quantity, group_threshold, "
                            "status, refunded_quantity, refunded_fen, after_sales_quantity) VALUES "
                            "($1, $2, 1, 'x', 'fresh', 990, 1, 0, 'cancelled', 0, 0, 0)",
                            oid,
                            day_deal,
                        )

        await asyncio.gather(*(worker(w, 2) for w in range(8)))  # warm-up, untimed
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w, per) for w in range(8)))
        elapsed = time.perf_counter() - t0
        await pool.close()
        return per * 8 / elapsed

    # --- scenario 2: flash sale ---------------------------------------------------------------------
    async def scenario_flash_sale(self) -> dict:
        racers = 1000 if self.quick else 5000
        units = racers // 10
        conn = await asyncpg.connect(self.dsn)
        try:
            leaders = await self.make_leaders(conn, 5)
            _, deals = await self.setup_day(conn, 1, units, limit=1)
            tokens = await self.make_shoppers(conn, racers, leaders)
        finally:
            await conn.close()
        statuses: dict[str, int] = {}
        sold_at: list[float] = []
        sem = asyncio.Semaphore(128)
        async with Driver(self.base, connections=140, timeout=60) as http:
            with self.progress() as prog:
                task = prog.add_task("scenario 2: flash sale", total=racers)
                start = time.perf_counter()

                async def race(token: str) -> None:
                    async with sem:
                        r = await http.post(
                            "/orders",
                            headers={"authorization": f"Bearer {token}"},
                            json={"items": [{"deal_id": deals[0], "quantity": 1}]},
                        )
                    key = (
                        str(r.status_code)
                        if r.status_code < 400
                        else r.json().get("code", str(r.status_code))
                    )
                    statuses[key] = statuses.get(key, 0) + 1
                    if r.status_code == 201:
                        sold_at.append(time.perf_counter() - start)
                    prog.advance(task)

                await asyncio.gather(*(race(t) for t in tokens))
        conn = await asyncpg.connect(self.dsn)
        try:
            reserved, stock = await conn.fetchrow(
                "SELECT reserved, stock FROM catalog.deals WHERE id = $1", deals[0]
            )
            orders = await conn.fetchval(
                "SELECT coalesce(sum(l.quantity), 0) FROM orders.order_lines l WHERE deal_id = $1",
                deals[0],
            )
        finally:
            await conn.close()
        others = {k: v for k, v in statuses.items() if k not in ("201", "out_of_stock")}
        return {
            "command": "make bench",
            "shoppers": racers,
            "units": units,
            "sold": statuses.get("201", 0),
            "out_of_stock": statuses.get("out_of_stock", 0),
            "other_errors": others,
            "reserved_in_db": reserved,
            "ordered_in_db": orders,
            "oversold": max(0, reserved - stock),
            "time_to_sell_out_s": round(max(sold_at), 2) if sold_at else None,
            "exactly_sold": statuses.get("201", 0) == units == reserved == orders,
        }

    # --- scenario 3: cutoff at scale ------------------------------------------------------------------
    async def scenario_cutoff(self) -> dict:
        n_orders = 10_000 if self.quick else 100_000
        n_leaders = 50 if self.quick else 500
        conn = await asyncpg.connect(self.dsn)
        try:
            leaders = await self.make_leaders(conn, n_leaders)
            day, deals = await self.setup_day(conn, 8, 10_000_000, limit=1_000_000)
            # one deal misses its threshold: its lines are cancelled and refunded at cutoff
            await conn.execute(
                "UPDATE catalog.deals SET group_threshold = $2 WHERE id = $1",
                deals[-1],
                n_orders * 10,
            )
            with console.status(f"scenario 3: inserting {n_orders} paid orders..."):
                await self.insert_paid_orders(conn, day, deals, leaders, n_orders)
            t0 = time.perf_counter()
            await conn.fetch(
                "SELECT leader_id, l.deal_id, sum(quantity) FROM orders.orders o JOIN "
                "orders.order_lines l ON l.order_id = o.id WHERE o.sale_date = $1 AND "
                "o.status = 'paid' GROUP BY leader_id, l.deal_id",
                datetime.fromisoformat(day).date(),
            )
            await conn.fetch(
                "SELECT l.deal_id, o.leader_id, sum(quantity) FROM orders.orders o JOIN "
                "orders.order_lines l ON l.order_id = o.id WHERE o.sale_date = $1 AND "
                "o.status = 'paid' GROUP BY l.deal_id, o.leader_id",
                datetime.fromisoformat(day).date(),
            )
            raw = time.perf_counter() - t0
            # a fairer second limit: the same row writes the close makes (failed lines
            # cancelled and refunded, orders confirmed with their list, one outbox event
            # each), as plain SQL in one transaction, measured and rolled back
            tr = conn.transaction()
            await tr.start()
            t0 = time.perf_counter()
            await conn.execute(RAW_CUTOFF_WRITES_SQL, datetime.fromisoformat(day).date(), deals[-1])
            raw_writes = time.perf_counter() - t0
            await tr.rollback()
        finally:
            await conn.close()
        from tests.helpers import staff

        ops = await staff(self.base)
        try:
            t0 = time.perf_counter()
            r = await ops.http.post(
                f"/catalog/days/{day}/close", headers=ops._headers(), timeout=3600
            )
            close_s = time.perf_counter() - t0
            summary = r.json()
            t0 = time.perf_counter()
            pickup = (datetime.fromisoformat(day).date() + timedelta(days=1)).isoformat()
            lists = await ops.get(
                "/orders/delivery-lists", params={"pickup_date": pickup}, timeout=600
            )
            sorting = await ops.get(
                "/orders/sorting-list", params={"pickup_date": pickup}, timeout=600
            )
            read_s = time.perf_counter() - t0
        finally:
            await ops.aclose()
        return {
            "command": "make bench",
            "orders": n_orders,
            "leaders": n_leaders,
            "close_status": r.status_code,
            "summary": summary,
            "delivery_lists": len(lists.json()),
            "sorting_rows": len(sorting.json()["products"]),
            "close_s": round(close_s, 2),
            "lists_read_s": round(read_s, 2),
            "raw_group_by_s": round(raw, 3),
            "raw_same_writes_s": round(raw_writes, 3),
            "ratio_to_raw_writes": ratio(close_s, raw_writes),
            "ratio_to_raw": round(close_s / raw, 2) if raw else None,
            "target_ratio": 3.0,
        }

    async def insert_paid_orders(
        self, conn, day: str, deals: list[int], leaders: list[int], n: int
    ) -> None:
        d = datetime.fromisoformat(day).date()
        await conn.execute(
            "INSERT INTO orders.orders (shopper_id, leader_id, leader_tier, commission_rate, "
            "sale_date, pickup_date, status, total_fen, refunded_fen, currency, pay_attempts, "
            "payment_intent_id, expires_at, created_at, paid_at) SELECT g, "
            "($3::int[])[1 + g % array_length($3::int[], 1)], 'standard', 0.12, $1::date, $1::date + 1, "
            "'paid', 1980, 0, 'CNY', 1, 'pi_bench_' || $4 || '_' || g, now(), now(), now() "
            "FROM generate_series(1, $2) g",
            d,
            n,
            leaders,
            uuid.uuid4().hex[:6],
        )
        await conn.execute(
            "INSERT INTO orders.order_lines (order_id, deal_id, product_id, product_name, category,"
            " unit_price_fen, quantity, group_threshold, status, refunded_quantity, refunded_fen, "
            "after_sales_quantity) SELECT o.id, ($2::int[])[1 + o.id % array_length($2::int[], 1)],"
            " 1, 'Bench product', 'fresh', 990, 2, d.group_threshold, 'active', 0, 0, 0 "
            "FROM orders.orders o JOIN catalog.deals d ON "
            "d.id = ($2::int[])[1 + o.id % array_length($2::int[], 1)] WHERE o.sale_date = $1::date",
            d,
            deals,
        )
        await conn.execute("ANALYZE orders.orders; ANALYZE orders.order_lines")

    # --- scenario 4: commission release ----------------------------------------------------------------
    async def scenario_release(self) -> dict:
        n_lines = int(os.environ.get("BENCH_RELEASE_LINES", "20000" if self.quick else "1000000"))
        n_leaders = int(os.environ.get("BENCH_RELEASE_LEADERS", "200" if self.quick else "5000"))
        from services.common.db import get_db
        from services.settlement import ledger
        from services.settlement.service import release_due

        conn = await asyncpg.connect(self.dsn)
        try:
            with console.status(f"scenario 4: inserting {n_lines} matured pending commissions..."):
                await self.insert_pending_commissions(conn, n_lines, n_leaders)
            # the raw limit: the same move in one statement, measured and rolled back so the
            # job then finds the same data
            tr = conn.transaction()
            await tr.start()
            t0 = time.perf_counter()
            raw_released = await conn.fetchval(RAW_RELEASE_SQL)
            raw = time.perf_counter() - t0
            await tr.rollback()
        finally:
            await conn.close()
        db = get_db("settlement")
        await warm(db)
        t0 = time.perf_counter()
        with console.status("scenario 4: release_due..."):
            released = await release_due(db)
        job_s = time.perf_counter() - t0
        async with db.session() as s:
            problems = await ledger.check_invariants(s)
        await db.dispose()
        return {
            "command": "make bench",
            "commission_lines": n_lines,
            "leaders": n_leaders,
            "released": released,
            "raw_released": int(raw_released),
            "release_s": round(job_s, 2),
            "raw_insert_select_s": round(raw, 3),
            "ratio_to_raw": ratio(job_s, raw),
            "target_ratio": 2.0,
            "ledger_invariants": problems[:5] or "hold",
        }

    async def insert_pending_commissions(self, conn, n: int, leaders: int) -> int:
        """Matured pending commissions and the ledger postings that earned them, set-based,
        exactly as `apply_pickup` leaves them (commission:<line> moves expense -> pending).
        Lines come in blocks per leader, as a pickup point's orders are picked up together."""
        first = 1 + (
            await conn.fetchval("SELECT coalesce(max(leader_id), 0) FROM settlement.commissions")
            or 0
        )
        first = max(first, 1_000_000)
        line0 = 1 + await conn.fetchval(
            "SELECT coalesce(max(order_line_id), 0) FROM settlement.commissions"
        )
        per = max(1, n // leaders)
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO settlement.commissions (order_line_id, order_id, leader_id, "
                "leader_tier, base_fen, rate, amount_fen, refunded_fen, reversed_fen, status, "
                "picked_up_at, available_at, created_at) SELECT $1 + g, $1 + g, "
                "$2 + (g / $4), 'standard', 990, 0.12, 119, 0, 0, 'pending', "
                "now() - interval '3 days', now() - interval '1 day', now() - interval '3 days' "
                "FROM generate_series(0, $3 - 1) g",
                line0,
                first,
                n,
                per,
            )
            await conn.execute(
                "INSERT INTO settlement.accounts (code, leader_id, kind, currency, allow_negative, "
                "balance_fen) VALUES ('platform:commission_expense', NULL, 'commission_expense', "
                "'CNY', true, 0) ON CONFLICT (code) DO NOTHING"
            )
            await conn.execute(
                "INSERT INTO settlement.accounts (code, leader_id, kind, currency, allow_negative, "
                "balance_fen) SELECT 'leader:' || l || ':' || k, l, k, 'CNY', k = 'receivable', 0 "
                "FROM (SELECT DISTINCT leader_id AS l FROM settlement.commissions "
                "WHERE leader_id >= $1) ls CROSS JOIN unnest(ARRAY['pending', 'available', "
                "'receivable']) k ON CONFLICT (code) DO NOTHING",
                first,
            )
            await conn.execute(
                "INSERT INTO settlement.ledger_transactions (reference, kind, memo, created_at) "
                "SELECT 'commission:' || order_line_id, 'commission_earned', 'bench', created_at "
                "FROM settlement.commissions WHERE order_line_id >= $1",
                line0,
            )
            await conn.execute(
                "INSERT INTO settlement.ledger_entries (transaction_id, account_id, amount_fen, "
                "currency, created_at) SELECT t.id, a.id, CASE WHEN a.kind = 'pending' THEN "
                "c.amount_fen ELSE -c.amount_fen END, 'CNY', c.created_at "
                "FROM settlement.commissions c "
                "JOIN settlement.ledger_transactions t ON t.reference = 'commission:' || c.order_line_id "
                "JOIN settlement.accounts a ON a.code IN ('leader:' || c.leader_id || ':pending', "
                "'platform:commission_expense') WHERE c.order_line_id >= $1",
                line0,
            )
            await conn.execute(
                "UPDATE settlement.accounts a SET balance_fen = s.total FROM (SELECT account_id, "
                "sum(amount_fen) AS total FROM settlement.ledger_entries GROUP BY account_id) s "
                "WHERE a.id = s.account_id"
            )
        await conn.execute(
            "ANALYZE settlement.commissions; ANALYZE settlement.accounts; "
            "ANALYZE settlement.ledger_transactions; ANALYZE settlement.ledger_entries"
        )
        return first

    # --- scenario 5: tier evaluation ---------------------------------------------------------------------
    async def scenario_tiers(self) -> dict:
        n_leaders = int(os.environ.get("BENCH_TIER_LEADERS", "2000" if self.quick else "50000"))
        per_day = int(os.environ.get("BENCH_TIER_ORDERS_PER_DAY", "1"))
        from services.common.db import get_db
        from services.common.settings import get_settings
        from services.leaders.evaluation import run_evaluations

        st = get_settings()
        conn = await asyncpg.connect(self.dsn)
        try:
            with console.status(f"scenario 5: {n_leaders} leaders, 30 days of order facts..."):
                leaders = await self.make_leaders(conn, n_leaders)
                facts = await self.insert_order_facts(conn, leaders, per_day)
            now = datetime.now(UTC)
            raws = []
            for _ in range(3):  # the best of three: the first also warms the cache
                t0 = time.perf_counter()
                await conn.fetch(
                    RAW_TIER_METRICS_SQL,
                    now - timedelta(days=st.tier_window_days),
                    now - timedelta(days=st.complaint_window_days),
                    now,
                )
                raws.append(time.perf_counter() - t0)
            raw = min(raws)
        finally:
            await conn.close()
        db = get_db("leaders")
        await warm(db)
        with console.status("scenario 5: run_evaluations..."):
            t0 = time.perf_counter()
            changes = await run_evaluations(db)
            evaluation_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            again = await run_evaluations(db)  # same day: the changed are claimed, nobody moves
            again_s = time.perf_counter() - t0
        await db.dispose()
        return {
            "command": "make bench",
            "leaders": n_leaders,
            "order_facts": facts,
            "changes": len(changes),
            "evaluation_s": round(evaluation_s, 2),
            "raw_aggregate_s": round(raw, 3),
            "ratio_to_raw": ratio(evaluation_s, raw),
            "target_ratio": 3.0,
            "second_run_same_day": {"changes": len(again), "s": round(again_s, 2)},
        }

    async def insert_order_facts(self, conn, leaders: list[int], per_day: int) -> int:
        """30 days of paid orders per leader in the leaders projection; one in ten leaders
        is advanced and has been below its bar for a whole window, so it is demoted, and
        one order in fifty has a refund."""
        base = await conn.fetchval("SELECT coalesce(max(order_id), 0) FROM leaders.order_facts")
        await conn.execute(
            "INSERT INTO leaders.order_facts (order_id, leader_id, shopper_id, total_fen, "
            "refunded_fen, sale_date, paid_at, picked_up_at, completed_at, cancelled_at) "
            "SELECT $1 + ((l.i - 1) * 30 + d) * $3 + j, l.id, 1 + (l.id * 31 + d * 7 + j) % 5000,"
            " 1980 + (d * j % 7) * 100, 0, (now() - d * interval '1 day')::date, "
            "now() - d * interval '1 day' - interval '2 hours', "
            "CASE WHEN d >= 2 THEN now() - (d - 1) * interval '1 day' END, "
            "CASE WHEN d >= 3 THEN now() - (d - 3) * interval '1 day' END, "
            "CASE WHEN (l.id + d + j) % 97 = 0 THEN now() - d * interval '1 day' END "
            "FROM unnest($2::int[]) WITH ORDINALITY AS l(id, i) "
            "CROSS JOIN generate_series(0, 29) d CROSS JOIN generate_series(1, $3) j",
            base,
            leaders,
            per_day,
        )
        await conn.execute(
            "INSERT INTO leaders.refund_facts (refund_id, order_id, amount_fen, refunded_at) "
            "SELECT 'bench-' || order_id, order_id, 500, paid_at + interval '1 day' "
            "FROM leaders.order_facts WHERE order_id > $1 AND order_id % 50 = 0",
            base,
        )
        await conn.execute(
            "UPDATE leaders.leaders SET tier = 'advanced', below_bar_since = now() - "
            "interval '31 days' WHERE id = ANY($1::int[]) AND id % 10 = 0",
            leaders,
        )
        await conn.execute(
            "ANALYZE leaders.order_facts; ANALYZE leaders.refund_facts; ANALYZE leaders.leaders"
        )
        return len(leaders) * 30 * per_day

    def progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
        )


def write_results(results: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    path = RESULTS / f"{stamp}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    m = results["machine"]
    lines = [
        f"\n## {stamp}{' (QUICK=1)' if results['quick'] else ''}\n",
        f"Command: `make bench{' QUICK=1' if results['quick'] else ''}`. Machine: "
        f"{m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}.\n",
        "| scenario | result | raw baseline (same run) | ratio | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    s = results["scenarios"]
    if "orders" in s:
        o = s["orders"]
        lines.append(
            f"| 1 order placement ({o['shoppers']} shoppers, {o['orders']} orders, "
            f"{o['errors']} errors) | {o['placement_only_peak_per_s']} placements/s; "
            f"{o['orders_placed_and_paid_per_s']} placed+paid/s; p50/p95/p99 "
            f"{o['placement_latency_ms'][50]}/{o['placement_latency_ms'][95]}/"
            f"{o['placement_latency_ms'][99]} ms; at half peak ({o['half_peak']['rate_per_s']}/s) "
            f"p99 {o['half_peak']['p99_ms']} ms | {o['raw_sql_orders_per_s']} orders/s | "
            f"{o['ratio_to_raw']}x | >= 0.25x, p99 <= 100 ms at half peak |"
        )
        mem = ", ".join(f"{k} {v}" for k, v in o["peak_rss_mb"].items())
        lines.append(f"| 6 memory (peak RSS during 1, MB) | {mem} | | | <= 150 MB each |")
    if "flash_sale" in s:
        f = s["flash_sale"]
        lines.append(
            f"| 2 flash sale ({f['shoppers']} shoppers, {f['units']} units) | sold {f['sold']}, "
            f"oversold {f['oversold']}, out_of_stock {f['out_of_stock']}, other errors "
            f"{f['other_errors'] or 0}, sold out in {f['time_to_sell_out_s']} s | | | exactly "
            f"{f['units']} sold, 0 oversold |"
        )
    if "cutoff" in s:
        c = s["cutoff"]
        lines.append(
            f"| 3 cutoff ({c['orders']} paid orders, {c['leaders']} leaders, one failing deal) | "
            f"close {c['close_s']} s ({c['delivery_lists']} delivery lists, "
            f"{c['sorting_rows']} sorting rows) | {c['raw_group_by_s']} s GROUP BY; "
            f"{c.get('raw_same_writes_s')} s same writes in SQL | {c['ratio_to_raw']}x; "
            f"{c.get('ratio_to_raw_writes')}x | <= 3x |"
        )
    if "release" in s:
        r = s["release"]
        lines.append(
            f"| 4 commission release ({r['commission_lines']} matured lines, {r['leaders']} "
            f"leaders) | release_due {r['release_s']} s, {r['released']} released; ledger "
            f"invariants: {r['ledger_invariants']} | {r['raw_insert_select_s']} s one INSERT ... "
            f"SELECT | {r['ratio_to_raw']}x | <= 2x |"
        )
    if "tiers" in s:
        t = s["tiers"]
        lines.append(
            f"| 5 tier evaluation ({t['leaders']} leaders, {t['order_facts']} order facts over "
            f"30 days) | run_evaluations {t['evaluation_s']} s, {t['changes']} tier changes | "
            f"{t['raw_aggregate_s']} s one aggregate | {t['ratio_to_raw']}x | <= 3x |"
        )
    md = ROOT / "bench" / "RESULTS.md"
    if not md.exists():
        md.write_text(
            "# Benchmark results\n\nAppended by `make bench`; raw JSON in bench/results/.\n"
        )
    with md.open("a") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


@app.command()
def main(
    quick: bool = typer.Option(False, envvar="QUICK"),
    only: str = typer.Option("", help="comma-separated: orders,flash_sale,cutoff,release,tiers"),
) -> None:
    bench = Bench(quick)
    bench.start()
    wanted = [w for w in only.split(",") if w] or [
        "orders",
        "flash_sale",
        "cutoff",
        "release",
        "tiers",
    ]
    try:
        for name in wanted:
            console.rule(f"scenario {name}")
            result = asyncio.run(getattr(bench, f"scenario_{name}")())
            bench.results["scenarios"][name] = result
            console.print_json(json.dumps(result, default=str))
    finally:
        bench.stop()
    path = write_results(bench.results)
    console.print(f"results: {path} and bench/RESULTS.md")


if __name__ == "__main__":
    app()
