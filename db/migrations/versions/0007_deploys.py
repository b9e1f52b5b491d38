"""Deploys: a server's learned host key and apps directory, a deployment's commit and
details, one port per project and server.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("servers") as batch:
        batch.add_column(sa.Column("known_hosts", sa.String(), nullable=True))
        batch.add_column(sa.Column("apps_root", sa.String(length=500), nullable=True))
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("commit_sha", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("details", sa.JSON(), nullable=True))
    # A project keeps one port on a server across its releases, so its URL stays the same.
    op.create_index(
        "uq_port_allocations_server_project",
        "port_allocations",
        ["server_id", "project_id"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_port_allocations_server_project", table_name="port_allocations")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("details")
        batch.drop_column("commit_sha")
    with op.batch_alter_table("servers") as batch:
        batch.drop_column("apps_root")
        batch.drop_column("known_hosts")
