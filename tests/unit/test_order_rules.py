from datetime import UTC, date, datetime, timedelta

from services.catalog.service import cutoff_for
from services.contracts.deals import threshold_met
from services.orders.rules import after_sales_open, reservation_expiry


def test_threshold_met_exactly_and_missed_by_one():
    assert threshold_met(10, 10)
    assert not threshold_met(9, 10)
    assert threshold_met(0, 0)  # no threshold: the deal always goes ahead


def test_after_sales_window_boundary_is_48_hours():
    picked = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    assert after_sales_open(picked, picked + timedelta(hours=48) - timedelta(seconds=1), 48)
    assert not after_sales_open(picked, picked + timedelta(hours=48), 48)


def test_reservation_expires_after_ttl_but_never_after_cutoff():
    created = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    far_cutoff = created + timedelta(hours=5)
    assert reservation_expiry(created, far_cutoff, 15) == created + timedelta(minutes=15)
    near_cutoff = created + timedelta(minutes=5)
    assert reservation_expiry(created, near_cutoff, 15) == near_cutoff


def test_cutoff_is_23_00_in_shanghai():
    # 23:00 Asia/Shanghai (UTC+8, no DST) is 15:00 UTC on the same date
    assert cutoff_for(date(2026, 11, 25)) == datetime(2026, 11, 25, 15, 0, tzinfo=UTC)
    assert cutoff_for(date(2026, 6, 1)) == datetime(2026, 6, 1, 15, 0, tzinfo=UTC)
