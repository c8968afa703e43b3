"""The worker the composition package assembles (services/platform/worker.py): every job
beat schedules is a task the worker runs, and the kernel's app alone has only its own.

Each check runs in a process of its own: reading the Celery app's configuration fixes it
for the process, and the test run's own settings come later (tests/conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys

WORKER = """
import json
from services.common.settings import get_settings
from services.platform.worker import celery, schedule
jobs = schedule(get_settings())
print(json.dumps({
    "scheduled": sorted(job["task"] for job in jobs.values()),
    "tasks": sorted(celery.tasks),
    "beat_schedule_is_the_schedule": celery.conf.beat_schedule == jobs,
}))
"""

KERNEL = """
import json
from services.common.celery_app import celery
print(json.dumps(sorted(t for t in celery.tasks if not t.startswith("celery."))))
"""


def _run(script: str):
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_scheduled_job_is_a_task_the_worker_runs():
    worker = _run(WORKER)
    assert worker["beat_schedule_is_the_schedule"]
    assert len(worker["scheduled"]) == 10
    assert set(worker["scheduled"]) <= set(worker["tasks"]), set(worker["scheduled"]) - set(
        worker["tasks"]
    )


def test_the_kernel_app_alone_runs_only_the_kernel_tasks():
    assert _run(KERNEL) == ["events.consume", "events.dispatch", "events.sweep_outboxes"]
