"""Alembic's environment: runs the migrations against DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from app.models import Base
from app.settings import Settings, get_settings

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    given = config.attributes.get("database_url")
    # Through Settings, so a plain postgresql:// URL gets the psycopg driver.
    return Settings(database_url=given).database_url if given else get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
