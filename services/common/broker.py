"""The Celery app every process shares: the services publish their outboxes' events with
it, and the worker runs tasks on it (the kernel's own in `celery_app`, every service's and
the schedule of jobs added by the composition package, `services.platform.worker`).

Tasks are acknowledged late and re-queued when a worker dies; see `celery_app`.

The app reads its configuration from the settings when it is first used, not when this
module is imported: whatever imported the code that publishes, a process installs its
settings first (the tests, `groupbuy run`) and the app follows them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from celery import Celery
from kombu.exceptions import OperationalError
from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

from .settings import Settings, get_settings


def configuration(st: Settings) -> dict[str, Any]:
    return {
        "broker_url": st.celery_broker_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_default_queue": st.celery_queue,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": st.broker_visibility_timeout_s,
            "unacked_restore_interval": st.broker_restore_interval_s,
            # every periodic look really scans, so the interval alone sets the delay
            "unacked_restore_throttle": 1,
            # the lock a worker takes to restore expired tasks: kombu keeps it 5 minutes, so
            # a worker killed while holding it (it scans on every poll) stopped every other
            # worker from restoring anything for that long (the SIGKILL test, now and then)
            "unacked_mutex_expire": max(5, int(2 * st.broker_restore_interval_s)),
        },
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
    }


celery = Celery("groupbuy")
# a promise: evaluated when the configuration is first needed (module docstring)
celery.add_defaults(lambda: configuration(get_settings()))


def _survive_a_broker_lost_with_unacked_tasks() -> None:
    """kombu 5.7's Redis transport: once the worker's broker connection dropped, its
    teardown (`collect()` lets go of the transport) leaves channels whose connection is
    gone, and the next broker call through one of them (requeueing the tasks the worker
    had taken, acknowledging a task that finished meanwhile) raised AttributeError
    instead of a connection error. The worker takes that for an unrecoverable error and
    exits, so a broker restart stopped every event until someone restarted the worker.
    Such a call now raises the connection error it is, which kombu and Celery already
    handle (the tasks stay in the broker's unacked set and come back after
    BROKER_VISIBILITY_TIMEOUT_S)."""
    # a private method, patched on purpose: kombu's types do not declare it
    original = kombu_redis.Channel._connparams  # type: ignore[attr-defined]
    if getattr(original, "survives_lost_broker", False):
        return

    def _connparams(self: kombu_redis.Channel, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise RedisConnectionError("this channel's broker connection is closed")
        return original(self, asynchronous=asynchronous)

    _connparams.survives_lost_broker = True  # type: ignore[attr-defined]  # a marker on the function
    kombu_redis.Channel._connparams = _connparams  # type: ignore[attr-defined]  # as above


_survive_a_broker_lost_with_unacked_tasks()


def broker_errors() -> tuple[type[BaseException], ...]:
    """What publishing raises when the broker is unreachable."""
    with celery.connection_for_write() as conn:
        return (OperationalError, *conn.connection_errors)


@contextmanager
def broker_redis() -> Iterator[Any]:
    """The broker's Redis client, or None when the broker is not Redis."""
    with celery.connection_for_write() as conn:
        # the driver check says it is the Redis transport's channel, which has `client`
        yield (
            cast(kombu_redis.Channel, conn.default_channel).client
            if conn.transport.driver_type == "redis"
            else None
        )
