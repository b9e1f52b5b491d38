"""A project's daily budget for model calls, and the days it was found crossed and told.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        # USD a UTC day of its model calls may cost before its chat is told; NULL: no budget.
        batch.add_column(sa.Column("daily_budget_usd", sa.Float(), nullable=True))
    op.create_table(
        "budget_notices",
        sa.Column("project_id", sa.String(32), sa.ForeignKey("projects.id"), primary_key=True),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("budget_usd", sa.Float(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("told_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("budget_notices")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("daily_budget_usd")
