"""The benchmark's arithmetic: a wrong percentile or ratio would misreport every target."""

import math

from bench.run import pct, ratio


def test_percentiles_pick_the_nearest_rank_of_the_sorted_values():
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    assert pct(values, 50) == 51.0
    assert pct(values, 99) == 99.0
    assert pct(values, 100) == 100.0
    assert pct([], 99) != pct([], 99)  # nan: no requests, no latency


def test_ratio_to_the_raw_baseline():
    assert ratio(2.5, 0.5) == 5.0
    assert ratio(1.0, 3.0) == 0.33
    # no baseline measured: no ratio rather than a division error or an infinite one
    assert ratio(1.0, 0.0) is None
    assert ratio(1.0, math.nan) is None
