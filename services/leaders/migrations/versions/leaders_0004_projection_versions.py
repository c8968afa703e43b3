"""versions of what orders projects: a shopper's binding, a leader's status and tier

Orders keeps its own copy of each shopper's leader and each leader's status and tier
(the placement no longer asks leaders over HTTP). Every change bumps the row's version,
and an event or push carries it, so orders applies them in any order and keeps the
newest.

Revision ID: leaders_0004
Revises: leaders_0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "leaders_0004"
down_revision: str | None = "leaders_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "users",
        sa.Column("binding_version", sa.BigInteger(), server_default="0", nullable=False),
        schema="leaders",
    )
    op.add_column(
        "leaders",
        sa.Column("terms_version", sa.BigInteger(), server_default="0", nullable=False),
        schema="leaders",
    )


def downgrade() -> None:
    op.drop_column("leaders", "terms_version", schema="leaders")
    op.drop_column("users", "binding_version", schema="leaders")
