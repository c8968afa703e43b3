"""balances and ledger entries as BIGINT

A platform account sums every commission ever paid, which passes INTEGER's 2^31 fen
(about 21 million CNY) within months at scale.

Revision ID: settlement_0003
Revises: settlement_0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "settlement_0003"
down_revision: str | None = "settlement_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # the append-only trigger fires on UPDATE rows, not on a column type change
    op.alter_column("accounts", "balance_fen", type_=sa.BigInteger(), schema="settlement")
    op.alter_column("ledger_entries", "amount_fen", type_=sa.BigInteger(), schema="settlement")


def downgrade() -> None:
    op.alter_column("ledger_entries", "amount_fen", type_=sa.Integer(), schema="settlement")
    op.alter_column("accounts", "balance_fen", type_=sa.Integer(), schema="settlement")
