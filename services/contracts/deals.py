"""A deal's group outcome (成团), the one rule both orders and catalog apply.

Orders decides it at the cutoff from the units its shoppers paid for; catalog records
what orders answered, and decides it itself for a deal orders has no row for (nobody
paid for it), so both must read the threshold the same way.
"""

from __future__ import annotations

from typing import Literal

GroupOutcome = Literal["succeeded", "failed"]


def threshold_met(paid_quantity: int, group_threshold: int) -> bool:
    """A deal goes ahead when paid units reach its threshold (0 = no threshold)."""
    return group_threshold <= 0 or paid_quantity >= group_threshold


def group_outcome(paid_quantity: int, group_threshold: int) -> GroupOutcome:
    """What the cutoff records for a deal: a deal nobody paid for succeeds only without
    a threshold."""
    return "succeeded" if threshold_met(paid_quantity, group_threshold) else "failed"
