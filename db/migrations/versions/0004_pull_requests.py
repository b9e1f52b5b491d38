"""Pull requests that tasks open on their project's forge.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pull_requests",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("task_id", sa.String(length=32), nullable=True),
        sa.Column("repo_full_name", sa.String(length=200), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("branch", sa.String(length=250), nullable=False),
        sa.Column("base", sa.String(length=250), nullable=False),
        sa.Column("title", sa.String(length=500), nullable=False),
        sa.Column("body", sa.String(), nullable=False),
        sa.Column("url", sa.String(length=1000), nullable=False),
        sa.Column("head_sha", sa.String(length=64), nullable=True),
        sa.Column("diff_stat", sa.JSON(), nullable=False),
        sa.Column("test_outcome", sa.JSON(), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("repo_full_name", "branch"),
    )
    op.create_index("ix_pull_requests_project_id", "pull_requests", ["project_id"], unique=False)
    op.create_index("ix_pull_requests_task_id", "pull_requests", ["task_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_pull_requests_task_id", table_name="pull_requests")
    op.drop_index("ix_pull_requests_project_id", table_name="pull_requests")
    op.drop_table("pull_requests")
