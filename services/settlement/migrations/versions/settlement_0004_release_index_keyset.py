"""pending commissions indexed by (available_at, id) for the release job's keyset walk

Each release batch starts after the last line the previous batch claimed instead of
stepping again over every index entry the run already released.

Revision ID: settlement_0004
Revises: settlement_0003
"""

from collections.abc import Sequence

from alembic import op

revision: str = "settlement_0004"
down_revision: str | None = "settlement_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_commissions_release", table_name="commissions", schema="settlement")
    op.create_index(
        "ix_commissions_release",
        "commissions",
        ["available_at", "id"],
        schema="settlement",
        postgresql_where="status = 'pending'",
    )


def downgrade() -> None:
    op.drop_index("ix_commissions_release", table_name="commissions", schema="settlement")
    op.create_index(
        "ix_commissions_release",
        "commissions",
        ["available_at"],
        schema="settlement",
        postgresql_where="status = 'pending'",
    )
