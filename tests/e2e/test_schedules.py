"""The scheduled checks on real parts: a Temporal Schedule's ticks, a server's sshd, the database,
the outbox, the bot and the Bot API stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from redis.asyncio import Redis
from sqlmodel import col, select
from temporalio.client import Client

from api.app import create_app
from core.enums import IncidentKind, ServerStatus
from core.faults import CRASH_AT_ENV
from core.ids import chat_stream
from core.schedules import SERVER_HEALTH
from core.settings import Settings
from db.engine import Database
from db.tables import Incident, OutboxMessage, Server
from db.users import ensure_admin_key
from stack.prepare import ensure_schedule
from testing.schedules import Ticks
from testing.ssh_host import Sshd, ssh_daemon
from testing.standins.telegram_api import TelegramStandIn, serving
from testing.waiting import eventually
from testing.worker_process import spawn_worker, stop, wait_ready, worker_env
from testing.workflows import running_worker
from tests.api.conftest import auth, live_server
from tests.bot.conftest import ADMIN, TOKEN, bot_running
from workflows.server_health import ServerHealthOutput


@dataclass
class Watched:
    """A READY server on an sshd of its own, the server-health Schedule, a worker, the API and
    the bot telling the admin's chat through the Bot API stand-in."""

    settings: Settings
    db: Database
    redis: Redis
    client: Client
    sshd: Sshd
    telegram: TelegramStandIn
    ticks: Ticks
    env: dict[str, str]  # of a worker process on the test's servers and queue
    log: Path

    def worker(self, **overrides: Any) -> contextlib.AbstractAsyncContextManager[str]:
        """The Temporal worker, in this process (``overrides``: of its settings)."""
        settings = self.settings.model_copy(update=overrides)
        return running_worker(
            self.client, self.db, self.redis, settings.home, settings=settings,
            task_queue=settings.temporal_task_queue,
        )  # fmt: skip

    async def check(self) -> ServerHealthOutput:
        return ServerHealthOutput.model_validate(await self.ticks.tick())

    async def server(self) -> Server:
        async with self.db.session() as session:
            return (await session.exec(select(Server).where(col(Server.handle) == "box"))).one()

    async def incidents(self) -> list[Incident]:
        async with self.db.session() as session:
            return list((await session.exec(select(Incident).order_by(col(Incident.id)))).all())

    def told(self) -> list[str]:
        """What the admin's chat was sent."""
        return [
            str(call.params.get("text"))
            for call in self.telegram.calls_of("sendMessage")
            if int(call.params.get("chat_id", 0)) == ADMIN["id"]
        ]


@pytest_asyncio.fixture
async def watched(
    sqlite_database: Database,
    sqlite_database_url: str,
    redis: Redis,
    redis_url: str,
    temporal_client: Client,
    temporal_address: str,
    tmp_path: Path,
) -> AsyncIterator[Watched]:
    queue = f"schedules-{tmp_path.name[-12:]}"
    settings = Settings(
        home=tmp_path / "home",
        temporal_task_queue=queue,
        incident_after_failures=2,
        telegram_admins=[ADMIN["id"]],
        # Only the test's triggers tick.
        server_health_interval_s=3600,
    )
    app = create_app(settings, database=sqlite_database, redis=redis, temporal=temporal_client)
    key = await ensure_admin_key(sqlite_database, tmp_path / "api_key")
    handle = temporal_client.get_schedule_handle(SERVER_HEALTH.schedule_id(settings))
    async with contextlib.AsyncExitStack() as stack:
        sshd = stack.enter_context(ssh_daemon())
        telegram = stack.enter_context(serving(TOKEN))
        await stack.enter_async_context(app.router.lifespan_context(app))
        api_url = await stack.enter_async_context(live_server(app))
        await add_server(api_url, key, sshd, sqlite_database)
        bot = Settings(
            home=tmp_path / "bot",
            telegram_token=TOKEN,
            telegram_admins=[ADMIN["id"]],
            telegram_api_url=telegram.url,
            api_url=api_url,
            api_key=key,
            redis_url=redis_url,
        )
        await stack.enter_async_context(bot_running(bot))
        assert await ensure_schedule(temporal_client, settings, SERVER_HEALTH)
        stack.push_async_callback(handle.delete)
        yield Watched(
            settings,
            sqlite_database,
            redis,
            temporal_client,
            sshd,
            telegram,
            Ticks(temporal_client, handle.id),
            worker_env(
                settings.home,
                database_url=sqlite_database_url,
                redis_url=redis_url,
                temporal_address=temporal_address,
                task_queue=queue,
                ORCHESTRATOR_INCIDENT_AFTER_FAILURES=str(settings.incident_after_failures),
                ORCHESTRATOR_TELEGRAM_ADMINS=str(ADMIN["id"]),
            ),
            tmp_path / "workers.log",
        )


async def add_server(api_url: str, key: str, sshd: Sshd, db: Database) -> None:
    """The sshd as a provisioned (READY) server, as `server add` and provisioning leave it."""
    body = {
        "handle": "box",
        "host": sshd.host.host,
        "port": sshd.host.port,
        "ssh_user": sshd.host.user,
        "private_key": sshd.host.private_key,
        "apps_root": str(sshd.host.dir),
    }
    async with httpx.AsyncClient(base_url=api_url, headers=auth(key)) as api:
        added = await api.post("/servers", json=body)
        assert added.status_code == 201, added.text
    async with db.session() as session:
        server = (await session.exec(select(Server).where(col(Server.handle) == "box"))).one()
        server.status = ServerStatus.ready
        server.known_hosts = sshd.host.known_hosts
        session.add(server)
        await session.commit()


async def test_a_server_whose_sshd_stops_opens_one_incident_told_once_and_resolves(
    watched: Watched,
) -> None:
    async with watched.worker():
        await _the_server_goes_down_and_comes_back(watched)


async def _the_server_goes_down_and_comes_back(watched: Watched) -> None:
    checked = await watched.check()
    assert [c.status for c in checked.checked] == [ServerStatus.ready], checked
    server = await watched.server()
    assert server.status == ServerStatus.ready and server.last_checked_at is not None
    assert server.health and server.health["disk_free_gb"] > 0 and server.health["cpus"] >= 1
    first_checked = server.last_checked_at

    watched.sshd.stop()
    checked = await watched.check()
    assert [(c.status, c.failures, c.opened) for c in checked.checked] == [
        (ServerStatus.unreachable, 1, [])
    ]
    server = await watched.server()
    assert server.status == ServerStatus.unreachable and server.last_error
    assert server.last_checked_at is not None and server.last_checked_at > first_checked
    assert await watched.incidents() == []  # one failure is not an incident (threshold 2)

    checked = await watched.check()  # the second in a row opens it
    [incident] = await watched.incidents()
    assert checked.checked[0].opened == [incident.id]
    assert incident.kind == IncidentKind.server_unreachable and incident.subject == "server:box"
    assert incident.resolved_at is None and incident.evidence["error"]
    await watched.check()  # still down: the same incident, nothing told again
    assert len(await watched.incidents()) == 1

    opened_note = await eventually(
        lambda: [text for text in watched.told() if f"Incident #{incident.id}" in text],
        "the admin's chat to be told of the incident",
    )
    assert len(opened_note) == 1 and "unreachable" in opened_note[0]

    watched.sshd.start()
    checked = await watched.check()
    assert checked.checked[0].status == ServerStatus.ready
    assert checked.checked[0].resolved == [incident.id]
    [resolved] = await watched.incidents()
    assert resolved.resolved_at is not None
    assert (await watched.server()).status == ServerStatus.ready

    await eventually(
        lambda: [text for text in watched.told() if f"Resolved #{incident.id}" in text],
        "the admin's chat to be told it is resolved",
    )
    await watched.check()  # up again: nothing more to tell
    assert len(await watched.incidents()) == 1
    # Written to the chat's stream twice in all, and sent twice: once each.
    async with watched.db.session() as session:
        query = select(OutboxMessage).where(col(OutboxMessage.stream) == chat_stream(ADMIN["id"]))
        assert len((await session.exec(query)).all()) == 2
    assert len(watched.told()) == 2, watched.told()


async def test_kill_9_of_the_worker_during_a_tick_opens_one_incident_told_once(
    watched: Watched,
) -> None:
    watched.sshd.stop()
    async with watched.worker():
        await watched.check()  # the first failure
    crashing = spawn_worker({**watched.env, CRASH_AT_ENV: "health.after_record"}, watched.log)
    try:
        await wait_ready(watched.settings, crashing)
        tick = asyncio.create_task(watched.ticks.tick())
        # It dies once the incident and its note are committed, before the note is sent.
        await eventually(lambda: crashing.poll() is not None, "the worker to die", within=60)
        assert crashing.returncode == -signal.SIGKILL
        [incident] = await watched.incidents()
        async with watched.worker():  # another worker takes the check up again
            await tick
            assert [i.id for i in await watched.incidents()] == [incident.id]
            await eventually(
                lambda: [t for t in watched.told() if f"Incident #{incident.id}" in t],
                "the admin's chat to be told",
            )
            await watched.check()  # still down: nothing new
    finally:
        stop(crashing)
    assert len(await watched.incidents()) == 1
    assert len(watched.told()) == 1, watched.told()


async def test_a_server_short_of_disk_is_degraded_and_opens_disk_low(watched: Watched) -> None:
    # Every disk is short of 100% free.
    async with watched.worker(server_disk_low_percent=100.0):
        [checked] = (await watched.check()).checked
        assert checked.status == ServerStatus.degraded and checked.opened == []
        assert "of its disk free" in checked.problems[0]
        server = await watched.server()
        assert server.status == ServerStatus.degraded and "disk free" in (server.last_error or "")
        [checked] = (await watched.check()).checked
        [incident] = await watched.incidents()
        assert checked.opened == [incident.id] and incident.kind == IncidentKind.disk_low
    await eventually(
        lambda: [text for text in watched.told() if f"Incident #{incident.id}" in text],
        "the admin's chat to be told",
    )
    async with watched.worker():  # enough room under the usual threshold: resolved
        [checked] = (await watched.check()).checked
        assert (checked.status, checked.resolved) == (ServerStatus.ready, [incident.id])
