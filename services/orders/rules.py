"""Pure order rules, tested at their edges without I/O. (A deal's threshold outcome is
shared with catalog: `services.contracts.deals`.)"""

from __future__ import annotations

from datetime import datetime, timedelta


def after_sales_open(picked_up_at: datetime, now: datetime, window_hours: int) -> bool:
    """A shopper may ask for a refund until `window_hours` after pickup (exclusive)."""
    return now < picked_up_at + timedelta(hours=window_hours)


def reservation_expiry(created_at: datetime, cutoff_at: datetime, ttl_minutes: int) -> datetime:
    """Unpaid orders hold stock for `ttl_minutes`, and never past the day's cutoff."""
    return min(created_at + timedelta(minutes=ttl_minutes), cutoff_at)
