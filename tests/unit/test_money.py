from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.money import Money, commission_for, format_yuan


@pytest.mark.parametrize(
    ("base", "rate", "expected"),
    [
        (1980, Decimal("0.12"), 238),  # 237.6 -> 238 (the first sale day's line)
        (25, Decimal("0.14"), 4),  # 3.50 exactly: half rounds up
        (24, Decimal("0.14"), 3),  # 3.36 rounds down
        (1, Decimal("0.12"), 0),  # 0.12 -> 0
        (4, Decimal("0.125"), 1),  # 0.5 -> 1
        (1000, Decimal("0"), 0),  # preparation tier earns nothing
        (0, Decimal("0.16"), 0),
        (-25, Decimal("0.14"), -4),  # claw-backs mirror earnings
    ],
)
def test_commission_rounds_half_up_to_the_fen(base, rate, expected):
    assert commission_for(base, rate) == expected


def test_commission_refuses_floats_and_bad_rates():
    with pytest.raises(TypeError):
        commission_for(1980, 0.12)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        commission_for(19.8, Decimal("0.12"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        commission_for(100, Decimal("1.5"))


@given(
    st.integers(min_value=0, max_value=10**12),
    st.sampled_from([Decimal("0"), Decimal("0.12"), Decimal("0.14"), Decimal("0.16")]),
)
def test_commission_is_within_half_a_fen_of_the_exact_value(base, rate):
    exact = Decimal(base) * rate
    assert abs(Decimal(commission_for(base, rate)) - exact) <= Decimal("0.5")


def test_yuan_formatting_uses_integers_only():
    assert format_yuan(12345) == "123.45"
    assert format_yuan(5) == "0.05"
    assert format_yuan(-5) == "-0.05"
    assert format_yuan(0) == "0.00"


def test_money_arithmetic_keeps_currency():
    assert (Money(100) + Money(250)).fen == 350
    assert (Money(990) * 2).fen == 1980
    with pytest.raises(ValueError):
        Money(1, "CNY") + Money(1, "USD")
    with pytest.raises(TypeError):
        Money(1.5)  # type: ignore[arg-type]
