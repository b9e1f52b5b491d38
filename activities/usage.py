"""Activities of the usage Schedule (workflows/usage.py): tell the chats of the projects whose
model calls cost more today than their daily budget, once per project and day (db/usage.py).
"""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from temporalio import activity

from core.contracts.chat import CHATS_KEY
from core.logging import get_logger
from core.settings import Settings
from db import outbox, usage, users
from db.engine import Database
from db.usage import BudgetCrossed

log = get_logger(__name__)


class BudgetCheckInput(BaseModel):
    day: date = Field(description="The UTC day whose cost is weighed: the tick's")


class BudgetTold(BaseModel):
    project: str
    cost_usd: float
    budget_usd: float
    chats: list[int] = Field(description="The chats its note went to")


class BudgetCheckOutput(BaseModel):
    day: date
    told: list[BudgetTold] = Field(
        default_factory=list, description="Projects past their budget, told in this run"
    )


class UsageActivities:
    def __init__(self, settings: Settings, db: Database, redis: Redis) -> None:
        self.settings = settings
        self.db = db
        self.redis = redis

    @activity.defn
    async def tell_budget_crossings(self, request: BudgetCheckInput) -> BudgetCheckOutput:
        """Find the projects past their daily budget on the day and not told yet; tell each
        one's chat (else the admins'), its notice and notes in one transaction, then send the
        notes (the outbox's relay sends them if this process dies first). A retry finds the
        projects it told already told."""
        async with self.db.session() as session:
            crossed = await usage.crossed_budgets(session, request.day)
        output = BudgetCheckOutput(day=request.day)
        if not crossed:
            return output
        admins = await self._admins() if any(c.chat_id is None for c in crossed) else []
        for each in crossed:
            chats = [each.chat_id] if each.chat_id is not None else admins
            if chats:
                # The bot reads the streams of the chats in this set.
                await self.redis.sadd(CHATS_KEY, *[str(chat) for chat in chats])
            async with self.db.session() as session:
                notes = await usage.record_budget_notice(session, each, chats)
            if notes is None:
                continue  # another run told it first
            await self._send(notes)
            output.told.append(_told(each, chats))
        return output

    async def _admins(self) -> list[int]:
        """The settings' Telegram admins, then the admin users with a Telegram id."""
        async with self.db.session() as session:
            known = await users.admin_telegram_ids(session)
        return list(dict.fromkeys(self.settings.telegram_admins + known))

    async def _send(self, notes: list[int]) -> None:
        try:
            await outbox.publish(self.db, self.redis, notes)
        except Exception as exc:  # committed: the relay sends them once Redis is back
            log.warning("budget notes deferred to the outbox relay", error=str(exc))


def _told(crossed: BudgetCrossed, chats: list[int]) -> BudgetTold:
    return BudgetTold(
        project=crossed.project,
        cost_usd=crossed.cost_usd,
        budget_usd=crossed.budget_usd,
        chats=chats,
    )
