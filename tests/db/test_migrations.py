"""The Alembic migrations build exactly the schema the models describe, on both databases."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import db.tables  # noqa: F401  (registers the tables)


# SQLite cannot reflect expression indexes; PostgreSQL compares them.
@pytest.mark.filterwarnings("ignore:.*expression-based index")
async def test_migrations_match_the_models(database):
    def diff(connection):
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, SQLModel.metadata)

    async with database.engine.connect() as connection:
        differences = await connection.run_sync(diff)
    assert differences == []


async def test_secret_names_are_unique_with_and_without_a_project(database):
    """SQL counts NULLs as distinct: servers' keys (no project) need the partial unique index."""
    from sqlalchemy.exc import IntegrityError

    from db.tables import Project, Secret, User

    async def insert(project_id, name):
        async with database.session() as session:
            session.add(Secret(project_id=project_id, name=name, ciphertext="c"))
            try:
                await session.commit()
            except IntegrityError:
                return False
            return True

    async with database.session() as session:
        user = User(name="u")
        session.add(user)
        await session.flush()
        projects = [Project(name=name, owner_id=user.id) for name in ("a", "b")]
        session.add_all(projects)
        await session.commit()
        a, b = (p.id for p in projects)
    assert await insert(None, "server:web-1")
    assert not await insert(None, "server:web-1")
    assert await insert(None, "server:web-2")
    assert await insert(a, "TOKEN") and await insert(b, "TOKEN")
    assert await insert(a, "server:web-1")  # a project's name does not clash with a server key
    assert not await insert(a, "TOKEN")
