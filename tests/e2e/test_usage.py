"""The usage Schedule on real parts: its ticks triggered on the Temporal dev server, the real
worker, the database's ledger as the gateway writes it, the outbox and the chats' Redis streams.
A project past its daily budget is told once that day in its chat (one without a chat: the
admins), however many ticks see it; a project under its budget, or with none, is told nothing."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest_asyncio
from redis.asyncio import Redis
from temporalio.client import Client

from activities.usage import BudgetCheckOutput
from core.contracts.chat import CHATS_KEY, ChatNote, decode_chat_entry
from core.ids import chat_stream
from core.schedules import USAGE
from core.settings import Settings
from db.engine import Database
from db.tables import ModelUsage, Project
from db.usage import save_call
from stack.prepare import ensure_schedule
from testing.schedules import Ticks
from testing.workflows import make_project, make_task, running_worker
from tests.api.test_schedules import remove_schedule

ADMIN_CHAT = 9_100_001
SHOP_CHAT, BLOG_CHAT = 9_100_002, 9_100_003


@dataclass
class Budgets:
    db: Database
    redis: Redis
    ticks: Ticks
    projects: dict[str, Project]

    async def spend(self, name: str, cost: float) -> None:
        """A task of the project whose agent made a call of ``cost``, recorded as the gateway
        records it."""
        task = await make_task(self.db, self.redis, self.projects[name])
        call = ModelUsage(
            task_id=task.id, provider="anthropic", tokens_in=100, tokens_out=10, cost_usd=cost
        )
        await save_call(self.db, call)

    async def tick(self) -> BudgetCheckOutput:
        return BudgetCheckOutput.model_validate(await self.ticks.tick())

    async def told(self, chat: int) -> list[str]:
        """The notes on the chat's stream, which the bot sends (once per note id)."""
        notes = [
            decode_chat_entry(fields) for _, fields in await self.redis.xrange(chat_stream(chat))
        ]
        assert all(isinstance(note, ChatNote) for note in notes), notes
        return [note.text for note in notes if isinstance(note, ChatNote)]


@pytest_asyncio.fixture
async def budgets(
    sqlite_database: Database, redis: Redis, temporal_client: Client, tmp_path: Path
) -> AsyncIterator[Budgets]:
    settings = Settings(
        home=tmp_path / "home",
        temporal_task_queue=f"usage-{tmp_path.name[-12:]}",
        telegram_admins=[ADMIN_CHAT],
        usage_interval_s=3600,  # only the test's triggers tick
    )
    projects = {}
    for name, chat, budget in (
        ("shop", SHOP_CHAT, 0.05),
        ("blog", BLOG_CHAT, 10.0),  # under its budget
        ("docs", None, 0.01),  # no chat of its own: the admins are told
        ("wiki", BLOG_CHAT, None),  # no budget
    ):
        project = await make_project(sqlite_database, name)
        async with sqlite_database.session() as session:
            project.chat_id, project.daily_budget_usd = chat, budget
            session.add(project)
            await session.commit()
        projects[name] = project
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(
            running_worker(
                temporal_client,
                sqlite_database,
                redis,
                settings.home,
                settings=settings,
                task_queue=settings.temporal_task_queue,
            )
        )
        assert await ensure_schedule(temporal_client, settings, USAGE)
        schedule_id = USAGE.schedule_id(settings)
        stack.push_async_callback(remove_schedule, temporal_client, schedule_id)
        yield Budgets(sqlite_database, redis, Ticks(temporal_client, schedule_id), projects)


async def test_a_crossed_budget_is_told_once_a_day_in_the_projects_chat(budgets: Budgets) -> None:
    await budgets.spend("shop", 0.03)
    await budgets.spend("blog", 2.0)
    await budgets.spend("wiki", 100.0)
    first = await budgets.tick()
    assert first.told == []  # shop's 0.03 is within its 0.05

    await budgets.spend("shop", 0.03)  # 0.06 today: past it
    await budgets.spend("docs", 0.02)
    crossed = await budgets.tick()
    assert [(told.project, told.chats) for told in crossed.told] == [
        ("docs", [ADMIN_CHAT]),
        ("shop", [SHOP_CHAT]),
    ]
    assert crossed.told[1].cost_usd == 0.06 and crossed.told[1].budget_usd == 0.05

    await budgets.spend("shop", 1.0)  # further past it, the same day
    for _ in range(2):
        assert (await budgets.tick()).told == []

    [note] = await budgets.told(SHOP_CHAT)
    assert "project shop" in note and "$0.06" in note and "$0.05" in note
    assert "orchestrator usage --project shop" in note
    [admins] = await budgets.told(ADMIN_CHAT)
    assert "project docs" in admins
    assert await budgets.told(BLOG_CHAT) == []  # blog under its budget, wiki without one
    chats = await budgets.redis.smembers(CHATS_KEY)
    assert {str(SHOP_CHAT).encode(), str(ADMIN_CHAT).encode()} <= chats
