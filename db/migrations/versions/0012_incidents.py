"""The schedulers' records: incidents, the failed-check streaks that open them, what a server's
last health check read, and the chat a project's incidents are told to.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("servers") as batch:
        batch.add_column(sa.Column("health", sa.JSON(), nullable=True))
    with op.batch_alter_table("projects") as batch:
        # The chat told of its incidents: the one whose PO session created it.
        batch.add_column(sa.Column("chat_id", sa.BigInteger(), nullable=True))
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(30), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("server_id", sa.String(32), nullable=True),
        sa.Column("project_id", sa.String(32), nullable=True),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acked_by", sa.String(200), nullable=True),
    )
    op.create_index("ix_incidents_kind", "incidents", ["kind"])
    op.create_index("ix_incidents_server_id", "incidents", ["server_id"])
    op.create_index("ix_incidents_project_id", "incidents", ["project_id"])
    op.create_index("ix_incidents_resolved_at", "incidents", ["resolved_at"])
    # One open incident per (kind, subject).
    op.create_index(
        "uq_incidents_open",
        "incidents",
        ["kind", "subject"],
        unique=True,
        sqlite_where=sa.text("resolved_at IS NULL"),
        postgresql_where=sa.text("resolved_at IS NULL"),
    )
    op.create_table(
        "check_streaks",
        sa.Column("kind", sa.String(30), primary_key=True),
        sa.Column("subject", sa.String(200), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_tick", sa.String(250), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("check_streaks")
    op.drop_index("uq_incidents_open", table_name="incidents")
    op.drop_table("incidents")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("chat_id")
    with op.batch_alter_table("servers") as batch:
        batch.drop_column("health")
