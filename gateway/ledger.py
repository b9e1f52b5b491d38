"""Per-task totals and budgets, kept in memory for the hot path and in ``model_usage`` for good.

The database is the truth: a gateway that (re)opens a task reads its totals back, so a budget
holds across a crash of the process serving it, and any process can read ``load_usage``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, computed_field
from sqlmodel import col, select

from api.db import Database
from api.models import ModelUsage


class Budget(BaseModel):
    """What one task may spend on model calls; None is no limit."""

    max_tokens: int | None = Field(default=None, gt=0)
    max_cost_usd: float | None = Field(default=None, gt=0)

    def exhausted(self, usage: TaskUsage) -> str | None:
        """Why the next call must be refused, or None. At the limit counts as spent."""
        if self.max_tokens is not None and usage.tokens >= self.max_tokens:
            return f"task budget exhausted: {usage.tokens} of {self.max_tokens} tokens used"
        if self.max_cost_usd is not None and usage.cost_usd >= self.max_cost_usd:
            return f"task budget exhausted: ${usage.cost_usd:.4f} of ${self.max_cost_usd:.4f} spent"
        return None


class TaskUsage(BaseModel):
    task_id: str
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_calls: int = Field(default=0, description="Calls of models with no known price")
    refusals: int = 0
    last_refusal: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out

    def add(self, row: ModelUsage) -> None:
        if row.refused:
            self.refusals += 1
            self.last_refusal = row.error
            return
        self.calls += 1
        self.tokens_in += row.tokens_in
        self.tokens_out += row.tokens_out
        self.cache_read_tokens += row.cache_read_tokens
        self.cache_write_tokens += row.cache_write_tokens
        if row.cost_usd is not None:
            self.cost_usd = round(self.cost_usd + row.cost_usd, 8)
        elif row.tokens_in or row.tokens_out:
            self.unpriced_calls += 1


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
