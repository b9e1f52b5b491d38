"""A server's edge: the base domain its apps get names under, the edge's ports and TLS, and the
root certificate of its internal CA (public) once a deploy has read it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("servers") as batch:
        # NULL: no names, an app is reached on its port (as every app was before).
        batch.add_column(sa.Column("base_domain", sa.String(length=253), nullable=True))
        # NULL: the edge's defaults (ports 80 and 443, admin 2019, every address, ACME).
        batch.add_column(sa.Column("edge", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("edge_ca", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("servers") as batch:
        batch.drop_column("edge_ca")
        batch.drop_column("edge")
        batch.drop_column("base_domain")
