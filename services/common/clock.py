"""An injectable clock: tests move time (cutoff, after-sales window, trial) without sleeping.

Every process reads `now()`; the dev/test-only `/internal/clock` route and
`CLOCK_OFFSET_FILE` let an e2e test shift all processes' time together.
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo


class Clock:
    def __init__(self) -> None:
        self._offset = timedelta(0)

    @property
    def _offset_file(self) -> str | None:
        # read each time: test fixtures set it after this module is imported
        return os.environ.get("CLOCK_OFFSET_FILE")

    def now(self) -> datetime:
        return datetime.now(UTC) + self._read_offset()

    def _read_offset(self) -> timedelta:
        if self._offset_file:
            try:
                with open(self._offset_file) as f:
                    return timedelta(seconds=float(f.read().strip() or 0))
            except (FileNotFoundError, ValueError):
                return timedelta(0)
        return self._offset

    def advance(self, delta: timedelta) -> None:
        self.set_offset(self._read_offset() + delta)

    def set_offset(self, offset: timedelta) -> None:
        if self._offset_file:
            # replaced whole, never truncated then written: a process reading the clock
            # at that moment sees the old offset or the new one, never an empty file
            # (which read as no offset at all: the real time, for one call)
            tmp = f"{self._offset_file}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(str(offset.total_seconds()))
            os.replace(tmp, self._offset_file)
        else:
            self._offset = offset

    def reset(self) -> None:
        self._offset = timedelta(0)
        if self._offset_file and os.path.exists(self._offset_file):
            os.remove(self._offset_file)


clock = Clock()


def local_today(tz: str) -> date:
    return clock.now().astimezone(ZoneInfo(tz)).date()


def local_datetime(day: date, at: time, tz: str) -> datetime:
    """A wall-clock time on a day in the platform's zone, as an aware UTC datetime."""
    return datetime.combine(day, at, tzinfo=ZoneInfo(tz)).astimezone(UTC)


def parse_hhmm(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))
