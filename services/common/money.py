"""Money is an integer number of fen (分) with its currency; rates are Decimals.

Nothing in the platform multiplies money by a float.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

Fen = int
CURRENCY = "CNY"


def commission_for(base_fen: Fen, rate: Decimal) -> Fen:
    """Commission on one order line: base x rate, rounded half-up to the fen.

    DOMAIN.md: "eligible amount (paid minus refunded) x the rate snapshotted on the
    order, rounded half-up to the fen". Negative bases (claw-backs) round away from
    zero symmetrically, so a full claw-back cancels the original amount exactly.
    """
    if not isinstance(base_fen, int) or isinstance(base_fen, bool):
        raise TypeError("base_fen must be an int number of fen")
    if not isinstance(rate, Decimal):
        raise TypeError("rate must be a Decimal")
    if rate < 0 or rate > 1:
        raise ValueError("rate must be between 0 and 1")
    return int((Decimal(base_fen) * rate).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def format_yuan(fen: Fen) -> str:
    """12345 -> '123.45', -5 -> '-0.05'; integer arithmetic only."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}{whole}.{cents:02d}"


@dataclass(frozen=True, slots=True)
class Money:
    fen: Fen
    currency: str = CURRENCY

    def __post_init__(self) -> None:
        if not isinstance(self.fen, int) or isinstance(self.fen, bool):
            raise TypeError("Money holds an int number of fen")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.fen + other.fen, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.fen - other.fen, self.currency)

    def __mul__(self, quantity: int) -> Money:
        if not isinstance(quantity, int):
            raise TypeError("money multiplies by whole quantities only")
        return Money(self.fen * quantity, self.currency)

    def _same(self, other: Money) -> None:
        if self.currency != other.currency:
            raise ValueError(f"currency mismatch: {self.currency} vs {other.currency}")

    def __str__(self) -> str:
        return f"{format_yuan(self.fen)} {self.currency}"
