"""The kernel's tasks on the shared Celery app (`broker`): event fan-out and consumption,
the outbox sweep, and what every worker process does around its tasks (logs, request ids,
metrics, its liveness mark).

Tasks are acknowledged late and re-queued when a worker dies, and a task Redis had handed
to a worker killed before it recorded it is sent again from the outbox (the worker's
liveness mark, `events.workers_lost`), so a SIGKILL mid-task loses nothing; every task is
safe to run twice (inbox dedupe, conditional updates).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import structlog
from celery import Task
from celery.exceptions import Reject
from celery.signals import (
    beat_init,
    before_task_publish,
    celeryd_init,
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from . import db
from .broker import broker_errors, celery
from .events import (
    SUBSCRIPTIONS,
    Envelope,
    Subscription,
    broker_restarted,
    consume,
    mark_broker,
    relay_outbox,
    replay_recent,
    retry_countdown,
    subscribers_of,
    unpublish,
    worker_alive,
    worker_stopped,
    workers_lost,
)
from .logging import configure_logging
from .settings import SERVICES, get_settings

__all__ = ["celery", "run"]

log = structlog.get_logger()

_settings = get_settings()

_loop: asyncio.AbstractEventLoop | None = None

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on this worker process's own long-lived event loop."""
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
    return _loop.run_until_complete(coro)


@worker_process_init.connect
def _fresh_loop_per_child(**_: Any) -> None:
    # engines and loops made before the fork must not be shared with the parent
    global _loop
    _loop = None
    db._databases.clear()
    db.WORKER_POOL.update(size=_settings.worker_db_pool_size, overflow=1)


# --- request ids, logs and metrics of tasks ---------------------------------------------
# Celery sends its signals' arguments as keywords it does not type: `Any` below says so.


@celeryd_init.connect
def _worker_logging(**_: Any) -> None:
    configure_logging("worker")


@beat_init.connect
def _beat_logging(**_: Any) -> None:
    configure_logging("beat")


@worker_init.connect
def _worker_metrics(**_: Any) -> None:
    port = get_settings().worker_metrics_port
    if port:
        path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if path and os.path.isdir(path):
            # an earlier run's files would be summed into this run's counters
            for name in os.listdir(path):
                if name.endswith(".db"):
                    os.unlink(os.path.join(path, name))
        # only now: prometheus_client's multiprocess mode opens this process's value files
        # when the metrics are defined, and the loop above removes an earlier run's files
        from .metrics import start_worker_metrics_server

        start_worker_metrics_server(port)


@worker_process_shutdown.connect
def _child_metrics_gone(pid: int | None = None, **_: Any) -> None:
    from .metrics import mark_worker_child_dead  # not at import: see _worker_metrics

    mark_worker_child_dead(pid or os.getpid())


@before_task_publish.connect
def _carry_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    # a task published while handling a request (or another task) inherits its id
    rid = structlog.contextvars.get_contextvars().get("request_id")
    if rid and headers is not None and not headers.get("request_id"):
        headers["request_id"] = rid


def _request_id_of(task: Task[Any, Any], args: Sequence[Any] | None) -> str | None:
    rid: str | None = getattr(task.request, "request_id", None)
    if not rid:
        rid = (getattr(task.request, "headers", None) or {}).get("request_id")
    if not rid:
        # an event relayed without headers still carries the id in its envelope
        for a in args or ():
            if isinstance(a, dict) and a.get("request_id"):
                found: str = a["request_id"]
                return found
    return rid


@task_prerun.connect
def _bind_task_context(
    task_id: str | None = None, task: Any = None, args: Any = None, **_: Any
) -> None:
    structlog.contextvars.clear_contextvars()
    ctx = {"process": "worker", "task": task.name, "task_id": task_id}
    rid = _request_id_of(task, args)
    if rid:
        ctx["request_id"] = rid
    structlog.contextvars.bind_contextvars(**ctx)
    log.debug("task_started")


@task_postrun.connect
def _unbind_task_context(state: str | None = None, **_: Any) -> None:
    log.debug("task_finished", state=state)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(process="worker")


@task_failure.connect
def _count_failure(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    from .metrics import TASK_FAILURES  # not at import: see _worker_metrics

    TASK_FAILURES.labels(task=sender.name).inc()
    log.error("task_failed", error_type=type(exception).__name__)


@task_retry.connect
def _count_retry(sender: Any = None, **_: Any) -> None:
    from .metrics import TASK_RETRIES  # not at import: see _worker_metrics

    TASK_RETRIES.labels(task=getattr(sender, "name", "unknown")).inc()


def _give_back(env: Envelope, error: BaseException) -> None:
    """The broker went away while this event was on its way to a consumer: mark it
    unpublished in its producer's outbox, so the sweep sends it again once the broker is
    back. Nothing else is trusted with it: the failed task's message may be acknowledged
    or lost with the connection. Consumers that had it already drop the repeat."""
    log.warning(
        "event_handed_back_to_outbox",
        event_id=env.get("id"),
        topic=env.get("topic"),
        producer=env.get("producer"),
        error=str(error),
    )
    if env.get("producer") in SERVICES:
        run(unpublish(db.get_db(env["producer"]), env["id"]))


def _log_consume_failed(sub: Subscription, env: Envelope, exc: Exception) -> None:
    log.warning(
        "event_consume_failed",
        consumer=sub.name,
        event_id=env.get("id"),
        topic=env.get("topic"),
        error=str(exc),
    )


@celery.task(name="events.dispatch")
def dispatch(events: Envelope | list[Envelope]) -> int:
    """Hand each event (one, or a relay's batch of them) to its subscribers.

    An event with a single subscriber (`order.paid`, `order.completed`, ...) is
    applied right here; others fan out, one task per subscriber, so each retries on its
    own. A failure goes the same retrying way as a fanned-out event; the inbox makes
    any repeat harmless. Each event is handled under its own request id."""
    batch = [events] if isinstance(events, dict) else events
    handed = 0
    for env in batch:
        rid = env.get("request_id")
        if rid:
            structlog.contextvars.bind_contextvars(request_id=rid)
        else:
            structlog.contextvars.unbind_contextvars("request_id")
        log.debug("event_dispatched", topic=env.get("topic"), event_id=env.get("id"))
        handed += _dispatch_one(env)
    return handed


def _dispatch_one(env: Envelope) -> int:
    """How many subscribers the event went to (0: handed back to its outbox)."""
    subs = subscribers_of(env["topic"])
    try:
        if len(subs) == 1:
            (sub,) = subs
            try:
                run(consume(db.get_db(sub.service), sub, env))
            except Exception as exc:
                _log_consume_failed(sub, env, exc)
                # Celery takes any sequence as args; its stubs say tuple (also below)
                consume_event.apply_async(args=[sub.name, env], countdown=1)  # type: ignore[arg-type]
            return 1
        for sub in subs:
            consume_event.apply_async(args=[sub.name, env])  # type: ignore[arg-type]
        return len(subs)
    except broker_errors() as exc:
        _give_back(env, exc)
        return 0


@celery.task(name="events.consume", bind=True, max_retries=_settings.event_max_retries)
def consume_event(self: Task[Any, Any], subscription_name: str, env: Envelope) -> bool:
    sub = SUBSCRIPTIONS[subscription_name]
    try:
        return run(consume(db.get_db(sub.service), sub, env))
    except Exception as exc:
        _log_consume_failed(sub, env, exc)
        try:
            retry = self.retry(
                exc=exc,
                countdown=retry_countdown(
                    self.request.retries, _settings.broker_visibility_timeout_s
                ),
                throw=False,
            )
        except Reject as lost:
            # the retry could not be queued: the broker is gone too
            _give_back(env, lost)
            return False
        raise retry from exc


class _Liveness:
    """The worker's liveness mark (events.workers_lost), refreshed from a thread of the
    main process, which only consumes and hands tasks to the pool's children."""

    def __init__(self) -> None:
        self.node: str | None = None
        self.stop = threading.Event()

    def start(self, node: str) -> None:
        self.node = node
        ttl = get_settings().worker_liveness_ttl_s

        def beat() -> None:
            while True:
                try:
                    worker_alive(node, ttl)
                except Exception:  # the broker is away: the mark expires, a replay follows
                    log.warning("worker_liveness_not_refreshed", node=node)
                if self.stop.wait(ttl / 3):
                    return

        threading.Thread(target=beat, name="groupbuy-liveness", daemon=True).start()

    def stopped(self) -> None:
        self.stop.set()
        if self.node is not None:
            try:
                worker_stopped(self.node)
            except Exception:  # the mark expires: one harmless replay
                log.warning("worker_liveness_not_cleared", node=self.node)


_liveness = _Liveness()


@worker_ready.connect
def _mark_alive(sender: Any = None, **_: Any) -> None:
    # the pid too: a worker restarted under the same node name is another worker, and the
    # one it replaces must still be seen gone
    _liveness.start(f"{sender.hostname}:{os.getpid()}")


@worker_shutdown.connect
def _mark_stopped(**_: Any) -> None:
    _liveness.stopped()


@celery.task(name="events.sweep_outboxes")
def sweep_outboxes() -> int:
    """Relay what a crash left in an outbox. A broker that restarted may have lost events
    it held but had not delivered (all of them without its data), and a worker killed
    outright the task it had just been handed, so after either those published within
    OUTBOX_REPLAY_WINDOW_S go out again first (the inbox makes repeats no-ops); the broker
    is marked as seen only once they are marked for the relay."""

    async def sweep() -> int:
        restarted = await asyncio.to_thread(broker_restarted)
        lost = await asyncio.to_thread(workers_lost)
        if restarted or lost:
            window = get_settings().outbox_replay_window_s
            replayed = sum([await replay_recent(db.get_db(s), window) for s in SERVICES])
            if restarted:
                await asyncio.to_thread(mark_broker)
            log.warning(
                "recent_events_replayed",
                broker_restarted=restarted,
                workers_lost=lost,
                events=replayed,
            )
        return sum([await relay_outbox(db.get_db(s)) for s in SERVICES])

    return run(sweep())
