"""The whole chat on real parts: a person on the Bot API stand-in, the bot, the API (TCP and its
Unix socket), the bridges, a Temporal worker running PO sessions and engineering tasks in podman
Workers, Redis, SQLite and the Temporal dev server.

``chat_stack(script, **settings)`` assembles it for one test; the PO is the scripted agent playing
``script`` (round N on a chat's N-th turn), its CLI talking to the API through the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
import pytest_asyncio
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlmodel import select
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from api.app import create_app
from bot.service import serve as serve_bot
from bridges.consumer import Bridge
from bridges.routes import routes
from core.enums import TaskStatus
from core.ids import po_session_workflow_id
from core.readiness import ready_file
from core.settings import Settings
from db.engine import Database
from db.migrate import upgrade_async
from db.tables import Task
from db.users import ensure_admin_key
from infra.containers import ContainerRuntime
from testing.standins.server import serve as serve_standin
from testing.standins.telegram_api import Call, TelegramStandIn, person
from testing.waiting import eventually
from testing.workflows import running_worker, small_runtime
from tests.api.conftest import live_server
from workflows.po_session import worker_id_for

TOKEN = "123456:chat-stand-in"


def new_person(name: str) -> dict[str, Any]:
    """Someone with a Telegram ID of their own: sessions (po-<chat id>) live on in the shared
    Temporal server, so no two tests may share a chat."""
    return person(uuid.uuid4().int % 10**9 + 10**9, name)


@dataclass
class ChatStack:
    settings: Settings
    telegram: TelegramStandIn
    db: Database
    redis: Redis
    client: Client
    admin_key: str
    admin: dict[str, Any] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.settings.home_dir

    def say(self, user: dict[str, Any], text: str, reply_to: Call | None = None) -> int:
        """``user`` writes ``text`` in their private chat; returns the message id."""
        update = self.telegram.send_text(user, text, reply_to=reply_to)
        return int(update["message"]["message_id"])

    def sent_to(self, chat_id: int) -> list[Call]:
        return [c for c in self.telegram.calls_of("sendMessage") if c.chat_id() == chat_id]

    def texts_to(self, chat_id: int) -> list[str]:
        return [str(c.params["text"]) for c in self.sent_to(chat_id)]

    async def wait_for(self, chat_id: int, needle: str, within: float = 60) -> Call:
        """The first message to ``chat_id`` whose text contains ``needle``."""
        found: list[Call] = []

        def check() -> bool:
            found[:] = [c for c in self.sent_to(chat_id) if needle in str(c.params["text"])]
            return bool(found)

        await eventually(check, f"a message to chat {chat_id} with {needle!r}", within=within)
        return found[0]

    def replies_to(self, chat_id: int, message_id: int) -> list[Call]:
        return [c for c in self.sent_to(chat_id) if _reply_target(c.params) == message_id]

    def workspace(self, chat_id: int) -> Path:
        return self.home / "po" / str(chat_id)

    async def session_status(self, chat_id: int) -> WorkflowExecutionStatus | None:
        try:
            description = await self.client.get_workflow_handle(
                po_session_workflow_id(chat_id)
            ).describe()
        except RPCError:
            return None
        return description.status


def _reply_target(params: dict[str, Any]) -> int | None:
    """The message a sendMessage answers: ``reply_parameters`` (aiogram's) or the older field."""
    raw = params.get("reply_parameters")
    if raw is not None:
        value = json.loads(raw) if isinstance(raw, str) else raw
        return int(value["message_id"])
    if params.get("reply_to_message_id") is not None:
        return int(params["reply_to_message_id"])
    return None


def po_script(*rounds: dict[str, Any]) -> dict[str, Any]:
    return {"rounds": [{"report": "completed", **r} for r in rounds]}


@pytest.fixture
def telegram() -> Any:
    standin = TelegramStandIn(TOKEN)
    with serve_standin(standin.app) as url:
        standin.url = url
        yield standin
        standin.closing = True


@pytest.fixture
def short_home(short_dir: Path) -> Path:
    """The API's socket lives under the home."""
    return short_dir


@contextlib.asynccontextmanager
async def running_bridges(settings: Settings, client: Client) -> AsyncIterator[None]:
    redis = Redis.from_url(settings.effective_redis_url)  # bytes, as python -m bridges uses it
    bridge = Bridge(redis, client, routes(settings), block_ms=200)
    stop = asyncio.Event()
    running = asyncio.create_task(bridge.run(stop))
    try:
        await eventually(lambda: bridge.ready.is_set() or running.done(), "bridges", within=15)
        if running.done():
            running.result()
        yield
    finally:
        stop.set()
        await asyncio.wait_for(running, 15)
        await redis.aclose()


@contextlib.asynccontextmanager
async def running_bot(settings: Settings) -> AsyncIterator[None]:
    stop = asyncio.Event()
    serving = asyncio.create_task(serve_bot(settings, stop))

    def started() -> bool:
        if serving.done():
            serving.result()
        return ready_file(settings, "bot").exists()

    await eventually(started, "the bot to start", within=15)
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(serving, 15)


@pytest_asyncio.fixture
async def chat_stack(
    telegram: TelegramStandIn,
    short_home: Path,
    temporal_client: Client,
    temporal_address: str,
    redis_url: str,
    redis: Redis,
    docker_client: docker.DockerClient,
    scripted_image: str,
) -> AsyncIterator[Callable[..., Any]]:
    """``async with chat_stack(script, worker=True, bot=True, **settings) as stack``."""

    @contextlib.asynccontextmanager
    async def make(
        script: dict[str, Any], *, worker: bool = True, bot: bool = True, **overrides: Any
    ) -> AsyncIterator[ChatStack]:
        admin = new_person("Ada")
        script_file = short_home / "po-script.json"
        script_file.write_text(json.dumps(script))
        database_url = f"sqlite+aiosqlite:///{short_home / 'orchestrator.db'}"
        await upgrade_async(database_url)
        db = Database(database_url)
        settings = Settings(
            home=short_home,
            database_url=database_url,
            redis_url=redis_url,
            temporal_address=temporal_address,
            temporal_task_queue=f"chat-{uuid.uuid4().hex}",
            telegram_token=TOKEN,
            telegram_admins=[admin["id"]],
            telegram_api_url=telegram.url,
            po_agent="scripted",
            po_script=script_file,
            po_turn_timeout_s=120,
            worker_memory="256m",
            worker_pids=128,
            **overrides,
        )
        admin_key = await ensure_admin_key(db, settings.api_key_file)
        app = create_app(settings, database=db, redis=redis, temporal=temporal_client)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(app.router.lifespan_context(app))
            api_url = await stack.enter_async_context(live_server(app, uds=settings.api_socket))
            settings = settings.model_copy(
                update={"api_url": api_url, "api_key": SecretStr(admin_key)}
            )
            await stack.enter_async_context(running_bridges(settings, temporal_client))
            if worker:
                await stack.enter_async_context(
                    running_worker(
                        temporal_client,
                        db,
                        redis,
                        short_home,
                        task_queue=settings.temporal_task_queue,
                        settings=settings,
                        runtime=small_runtime(docker_client),
                    )
                )
            if bot:
                await stack.enter_async_context(running_bot(settings))
            chat = ChatStack(settings, telegram, db, redis, temporal_client, admin_key, admin)
            try:
                yield chat
            finally:
                await _end_sessions(chat, ContainerRuntime(docker_client))
        await db.dispose()

    yield make


async def _end_sessions(chat: ChatStack, runtime: ContainerRuntime) -> None:
    """Cancel the tasks this stack left unfinished (a failed test), then the PO sessions it
    started, and wait for them: their Workers go too."""
    async with chat.db.session() as session:
        tasks = (await session.exec(select(Task))).all()
    for task in tasks:
        if not TaskStatus(task.status).is_terminal:
            await _end_run(chat, task.workflow_id)
            await runtime.remove(f"{task.id}-developer")  # workflows/engineering.py
    for chat_id in {c.chat_id() for c in chat.telegram.calls_of("sendMessage")}:
        await _end_run(chat, po_session_workflow_id(chat_id))
        await runtime.remove(worker_id_for(chat_id))  # gone already, unless it was terminated


async def _end_run(chat: ChatStack, workflow_id: str) -> None:
    handle = chat.client.get_workflow_handle(workflow_id)
    with contextlib.suppress(RPCError):
        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            await handle.cancel()
            try:
                await asyncio.wait_for(handle.result(), 30)
            except TimeoutError:
                await handle.terminate("the test is over")
            except Exception:  # it ends cancelled: that is the point
                pass
