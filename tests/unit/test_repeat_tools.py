"""The tools that hunt flaky tests: `make test-repeat`'s report reader and TEST_CLOCK_START."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from tests.conftest import clock_start_offset
from tests.repeat import Run, read_report, table

SHANGHAI = ZoneInfo("Asia/Shanghai")


def test_a_local_time_starts_the_clock_at_that_time_today_in_shanghai():
    now = datetime(2026, 12, 2, 16, 30, tzinfo=UTC)  # 00:30 on the 3rd in Shanghai
    started = now + clock_start_offset("22:59:30", now)
    assert started.astimezone(SHANGHAI) == datetime(2026, 12, 3, 22, 59, 30, tzinfo=SHANGHAI)
    started = now + clock_start_offset("23:59", now)
    assert started.astimezone(SHANGHAI) == datetime(2026, 12, 3, 23, 59, tzinfo=SHANGHAI)


def test_an_iso_time_is_taken_as_it_is_and_now_is_no_offset():
    now = datetime(2026, 12, 2, 16, 30, tzinfo=UTC)
    started = now + clock_start_offset("2026-12-31T23:59:30+08:00", now)
    assert started == datetime(2026, 12, 31, 15, 59, 30, tzinfo=UTC)
    assert not clock_start_offset("now", now) and not clock_start_offset(None, now)


def test_the_report_names_each_failed_test_with_its_first_error_line(tmp_path):
    report = tmp_path / "run.xml"
    report.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="3" failures="1" '
        'errors="1" skipped="0">'
        '<testcase classname="tests.a" name="test_ok"/>'
        '<testcase classname="tests.a" name="test_bad">'
        '<failure message="&#10;  AssertionError: got 409&#10; more">trace</failure></testcase>'
        '<testcase classname="tests.b" name="test_setup">'
        '<error message="fixture failed">trace</error></testcase>'
        "</testsuite></testsuites>"
    )
    counts, failures = read_report(report)
    assert counts == {"tests": 3, "failures": 1, "errors": 1, "skipped": 0}
    assert failures == [
        ("tests.a::test_bad", "AssertionError: got 409"),
        ("tests.b::test_setup", "fixture failed"),
    ]
    run = Run(1, datetime(2026, 12, 2, tzinfo=UTC), False, "now", 200.0, 1, counts, failures)
    out = table([run])
    assert "FAIL: 1 passed, 1 failures, 1 errors" in out
    assert "`tests.a::test_bad`: AssertionError: got 409" in out
    assert out.endswith("0 of 1 runs passed")


def test_a_run_that_wrote_no_report_is_a_failure(tmp_path):
    counts, failures = read_report(tmp_path / "missing.xml")
    assert counts == {} and failures[0][0] == "<no report>"
