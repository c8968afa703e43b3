"""The one rule of a deal's group outcome, which orders applies at the cutoff and catalog
applies to a deal nobody paid for (services/contracts/deals.py)."""

import pytest

from services.contracts.deals import group_outcome, threshold_met

# (paid units, group threshold, outcome)
CASES = [
    (0, 0, "succeeded"),  # no threshold, nobody ordered: the deal still goes ahead
    (5, 0, "succeeded"),
    (0, 1, "failed"),  # a threshold and nobody ordered
    (0, 3, "failed"),
    (2, 3, "failed"),  # missed by one
    (3, 3, "succeeded"),  # met exactly
    (4, 3, "succeeded"),
]


@pytest.mark.parametrize(("paid", "threshold", "outcome"), CASES)
def test_group_outcome_table(paid, threshold, outcome):
    assert group_outcome(paid, threshold) == outcome
    assert threshold_met(paid, threshold) is (outcome == "succeeded")


@pytest.mark.parametrize("threshold", range(0, 6))
def test_nobody_paid_succeeds_only_without_a_threshold(threshold):
    # what catalog recorded for a deal absent from orders' answer before the rule was
    # shared: failed when the threshold is above the 0 units confirmed
    before = "failed" if threshold > 0 else "succeeded"
    assert group_outcome(0, threshold) == before
