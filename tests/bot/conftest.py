"""The bot on real parts: the real API (uvicorn, SQLite, Redis) and a Telegram Bot API stand-in.

The bot runs in this process (``bot.service.serve``, the same code ``python -m bot`` runs) and
reaches the stand-in through aiogram's ``TelegramAPIServer``, as it would a local Bot API server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from redis.asyncio import Redis

from api.app import create_app
from bot.api import OrchestratorApi
from bot.chat import ChatOptions
from bot.service import serve
from core.readiness import ready_file
from core.settings import Settings
from db.engine import Database
from db.users import ensure_admin_key
from testing.standins.telegram_api import TelegramStandIn, person, serving
from testing.waiting import eventually
from tests.api.conftest import auth, live_server

TOKEN = "123456:stand-in-token"
ADMIN = person(1001, "Admin")


@pytest.fixture
def telegram() -> Iterator[TelegramStandIn]:
    with serving(TOKEN) as standin:
        yield standin


@pytest_asyncio.fixture
async def api_app(
    sqlite_database: Database, redis: Redis, tmp_path: Path
) -> AsyncIterator[FastAPI]:
    # No Temporal: the bot only reads, and tasks are moved along through the TaskService.
    app = create_app(Settings(home=tmp_path), database=sqlite_database, redis=redis)
    async with app.router.lifespan_context(app):
        yield app


@pytest_asyncio.fixture
async def api_url(api_app: FastAPI) -> AsyncIterator[str]:
    async with live_server(api_app) as url:
        yield url


@pytest_asyncio.fixture
async def admin_key(sqlite_database: Database, tmp_path: Path) -> str:
    return await ensure_admin_key(sqlite_database, tmp_path / "api_key")


@pytest_asyncio.fixture
async def admin(api_url: str, admin_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_url, headers=auth(admin_key)) as client:
        yield client


@pytest.fixture
def bot_settings(
    telegram: TelegramStandIn, api_url: str, admin_key: str, redis_url: str, tmp_path: Path
) -> Settings:
    return Settings(
        home=tmp_path,
        telegram_token=TOKEN,
        telegram_admins=[ADMIN["id"]],
        telegram_api_url=telegram.url,
        api_url=api_url,
        api_key=admin_key,
        redis_url=redis_url,
    )


# Quick enough for tests: a message the API does not take is reported after 2 s.
QUICK_CHAT = ChatOptions(deliver_within_s=2.0, typing_interval_s=0.2, typing_timeout_s=30.0)
QUICK_DELIVERY: dict[str, Any] = {"block_ms": 100, "backoff_min_s": 0.05, "backoff_max_s": 0.5}


@dataclass
class RunningBot:
    settings: Settings
    api: OrchestratorApi
    # Every request the bot made to the API, as "METHOD /path?query".
    api_calls: list[str]
    stop: asyncio.Event
    serving: asyncio.Task[None]

    async def stopped(self) -> None:
        """Stop it (as SIGTERM does) and wait until it has."""
        self.stop.set()
        await asyncio.wait_for(asyncio.shield(self.serving), 15)


@contextlib.asynccontextmanager
async def bot_running(
    settings: Settings, *, options: ChatOptions = QUICK_CHAT
) -> AsyncIterator[RunningBot]:
    """``bot.service.serve`` in this process, until the block ends."""
    calls: list[str] = []

    async def record(request: httpx.Request) -> None:
        query = f"?{request.url.query.decode()}" if request.url.query else ""
        calls.append(f"{request.method} {request.url.path}{query}")

    api = OrchestratorApi.from_settings(settings, event_hooks={"request": [record]})
    stop = asyncio.Event()
    serving = asyncio.create_task(
        serve(settings, stop, api=api, options=options, delivery=QUICK_DELIVERY)
    )
    ready = ready_file(settings, "bot")

    async def started() -> bool:
        if serving.done():
            serving.result()  # raise what stopped it
        return ready.exists()

    try:
        await eventually(started, "the bot to start polling", within=15)
        yield RunningBot(settings, api, calls, stop, serving)
    finally:
        stop.set()
        await asyncio.wait_for(serving, 15)
        await api.aclose()
        assert not ready.exists(), "the ready file outlived the bot"


@pytest_asyncio.fixture
async def running_bot(bot_settings: Settings) -> AsyncIterator[RunningBot]:
    async with bot_running(bot_settings) as running:
        yield running
