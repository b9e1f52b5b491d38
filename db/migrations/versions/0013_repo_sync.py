"""The repository sync's records: a pull request's merge (its commit, when, the deploy it
started) and the projects that deploy each merge.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pull_requests") as batch:
        batch.add_column(sa.Column("merge_commit_sha", sa.String(64), nullable=True))
        batch.add_column(sa.Column("merged_at", sa.DateTime(timezone=True), nullable=True))
        # The deploy its merge started: set in the transaction that records the merge.
        batch.add_column(sa.Column("deploy_task_id", sa.String(32), nullable=True))
    with op.batch_alter_table("projects") as batch:
        # A constant default: SQLite adds the column in place (an expression's default would
        # make batch mode copy the table, losing the expression index on lower(name)).
        batch.add_column(sa.Column("auto_deploy", sa.Boolean(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("auto_deploy")
    with op.batch_alter_table("pull_requests") as batch:
        batch.drop_column("deploy_task_id")
        batch.drop_column("merged_at")
        batch.drop_column("merge_commit_sha")
