"""Work that follows a committed change without making the request wait for it.

Nothing here is the only way the work happens: a beat job repeats it (outbox sweep,
refund execution), so a background run that fails or dies with its process loses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger()
_running: set[asyncio.Task[None]] = set()


def after_response(work: Callable[[], Awaitable[object]], what: str) -> None:
    async def run() -> None:
        try:
            await work()
        except Exception:
            log.warning("background_work_deferred", what=what, exc_info=True)

    task = asyncio.get_running_loop().create_task(run())
    _running.add(task)
    task.add_done_callback(_running.discard)
