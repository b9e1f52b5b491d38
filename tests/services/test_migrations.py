"""The Alembic migrations build exactly the schema the models describe, on both databases."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import api.models  # noqa: F401  (registers the tables)


# SQLite cannot reflect expression indexes; PostgreSQL compares them.
@pytest.mark.filterwarnings("ignore:.*expression-based index")
async def test_migrations_match_the_models(database):
    def diff(connection):
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, SQLModel.metadata)

    async with database.engine.connect() as connection:
        differences = await connection.run_sync(diff)
    assert differences == []
