"""Project names are unique regardless of case: they become repository names.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("uq_projects_lower_name", "projects", [sa.text("lower(name)")], unique=True)


def downgrade() -> None:
    op.drop_index("uq_projects_lower_name", table_name="projects")
