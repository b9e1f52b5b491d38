"""Model usage: the calls the gateway made for a task (``model_usage``), and their totals.

The database is the truth: a gateway that (re)opens a task reads its totals back, so a budget
holds across a crash of the process serving it, and any process can read ``load_usage``.
"""

from __future__ import annotations

from sqlmodel import col, select

from core.contracts.agents import TaskUsage
from db.engine import Database
from db.tables import ModelUsage


async def load_usage(db: Database, task_id: str) -> TaskUsage:
    """A task's totals as the database has them (every call the gateway answered or refused)."""
    # A task makes tens to hundreds of calls: summing its rows here keeps one definition of the
    # totals (``TaskUsage.add``) for the gateway's memory and for the database alike.
    query = (
        select(ModelUsage).where(col(ModelUsage.task_id) == task_id).order_by(col(ModelUsage.id))
    )
    usage = TaskUsage(task_id=task_id)
    async with db.session() as session:
        for row in await session.exec(query):
            usage.add(row)
    return usage


async def save_call(db: Database, row: ModelUsage) -> None:
    async with db.session() as session:
        session.add(row)
        await session.commit()
