"""orders' copy of each shopper's leader and each leader's status and tier

Placing an order read them from the leaders service over HTTP, a fifth of the CPU of a
placement (bench scenario 1); the leaders service now sends every change with a version
(events, and a push after the changes people act on at once).

Revision ID: orders_0003
Revises: orders_0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "orders_0003"
down_revision: str | None = "orders_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shopper_leaders",
        sa.Column("shopper_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("leader_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("shopper_id"),
        schema="orders",
    )
    op.create_table(
        "leader_terms",
        sa.Column("leader_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("tier", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("leader_id"),
        schema="orders",
    )


def downgrade() -> None:
    op.drop_table("leader_terms", schema="orders")
    op.drop_table("shopper_leaders", schema="orders")
