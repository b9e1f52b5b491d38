"""The app-health Schedule on a deployed app: started again once when killed, an incident with its
log tail when it stays down, told to the project's chat, resolved when it is back; a certificate
running out opens its own incident."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest_asyncio
from redis.asyncio import Redis
from sqlmodel import col, select
from temporalio.client import Client

from core.contracts.chat import ChatNote, decode_chat_entry
from core.enums import DeploymentStatus, IncidentKind
from core.ids import chat_stream
from core.schedules import APP_HEALTH
from db.engine import Database
from db.tables import Deployment, Incident, Project, Server
from stack.prepare import ensure_schedule
from testing.deploy import SERVER, DeployStack, deploy_stack_on, served
from testing.schedules import Ticks
from testing.ssh_host import SshHost
from testing.tls import https_server
from testing.waiting import eventually
from workflows.app_health import AppHealthOutput

CHAT = 4242  # the chat whose PO session made the project


@pytest_asyncio.fixture
async def watched_stack(
    sqlite_database: Database,
    redis: Redis,
    temporal_client: Client,
    sshd: SshHost,
    tmp_path: Path,
) -> AsyncIterator[DeployStack]:
    async with deploy_stack_on(
        sqlite_database,
        redis,
        temporal_client,
        sshd,
        tmp_path / "home",
        incident_after_failures=2,
        app_health_interval_s=3600,  # only the test's triggers tick
        app_health_timeout_s=2,
        app_restart_wait_s=3,
    ) as stack:
        assert await ensure_schedule(temporal_client, stack.settings, APP_HEALTH)
        try:
            yield stack
        finally:
            await temporal_client.get_schedule_handle(
                APP_HEALTH.schedule_id(stack.settings)
            ).delete()


class App:
    """The deployed app on the loopback server, as its files and processes are there."""

    def __init__(self, stack: DeployStack, name: str, url: str) -> None:
        self.stack = stack
        self.dir = stack.apps_root / name
        self.url = url
        self.ticks = Ticks(stack.client, APP_HEALTH.schedule_id(stack.settings))

    @property
    def release(self) -> str:
        return str(json.loads((self.dir / "current.json").read_text())["release"])

    def kill(self) -> None:
        """SIGKILL to the release's supervisor and app: its whole process group."""
        leader = int((self.dir / "run" / f"{self.release}.pid").read_text())
        os.killpg(leader, signal.SIGKILL)

    async def answers(self) -> bool:
        try:
            return bool(await served(self.url))
        except Exception:
            return False

    async def check(self) -> AppHealthOutput:
        return AppHealthOutput.model_validate(await self.ticks.tick())


async def incidents(stack: DeployStack) -> list[Incident]:
    async with stack.db.session() as session:
        return list((await session.exec(select(Incident).order_by(col(Incident.id)))).all())


async def chat_notes(redis: Redis) -> list[ChatNote]:
    entries = await redis.xrange(chat_stream(CHAT))
    notes = [decode_chat_entry(fields) for _, fields in entries]
    return [note for note in notes if isinstance(note, ChatNote)]


async def deployed(stack: DeployStack) -> App:
    project = await stack.project()
    done = await stack.run_deploy(project["id"])
    assert done["status"] == "COMPLETED", done["error"]
    async with stack.db.session() as session:
        row = await session.get(Project, project["id"])
        assert row is not None
        row.chat_id = CHAT  # as if its chat's PO session had made it
        session.add(row)
        await session.commit()
    return App(stack, project["name"], done["result"]["deployed_url"])


async def test_a_killed_app_is_started_again_once_and_one_kept_down_opens_an_incident(
    watched_stack: DeployStack,
) -> None:
    stack = watched_stack
    app = await deployed(stack)
    [healthy] = (await app.check()).checked
    assert (healthy.up, healthy.restarted, healthy.failures) == (True, False, 0)

    app.kill()
    assert not await app.answers()
    [back] = (await app.check()).checked
    assert (back.up, back.restarted, back.failures, back.opened) == (True, True, 0, [])
    assert await app.answers()
    assert await incidents(stack) == []

    # Killed again, and it cannot start: its code is gone.
    main = app.dir / "current" / "app" / "__main__.py"
    main.rename(main.with_suffix(".gone"))
    app.kill()
    [down] = (await app.check()).checked
    assert (down.up, down.restarted, down.failures, down.opened) == (False, True, 1, [])
    [still] = (await app.check()).checked  # the second failure in a row opens it: no restart
    assert (still.up, still.restarted, still.failures) == (False, False, 2)
    [incident] = await incidents(stack)
    assert still.opened == [incident.id]
    assert incident.kind == IncidentKind.app_down and incident.project_id is not None
    assert "No module named app.__main__" in incident.evidence["log_tail"]  # the app's own words
    assert incident.evidence["release"] == app.release
    [note] = await eventually(lambda: chat_notes(stack.redis), "the project's chat to be told")
    assert note.note_id == f"incident-{incident.id}-opened"
    assert "No module named app.__main__" in note.text

    # A person mends it and starts it.
    main.with_suffix(".gone").rename(main)
    started = stack.sshd.run(str(app.dir / "appctl.sh"), "start", app.release)
    assert started.returncode == 0, started.stderr
    await eventually(app.answers, "the app to answer again")
    [up] = (await app.check()).checked
    assert (up.up, up.resolved) == (True, [incident.id])
    notes = await eventually(
        lambda: _at_least(chat_notes(stack.redis), 2), "the chat to be told it is resolved"
    )
    assert [n.note_id for n in notes] == [
        f"incident-{incident.id}-opened",
        f"incident-{incident.id}-resolved",
    ]
    [resolved] = await incidents(stack)
    assert resolved.resolved_at is not None


async def _at_least(notes: Any, count: int) -> list[ChatNote] | None:
    got: list[ChatNote] = await notes
    return got if len(got) >= count else None


async def test_a_certificate_running_out_within_the_threshold_opens_an_incident(
    watched_stack: DeployStack,
) -> None:
    stack = watched_stack
    created = await stack.api.post("/projects", json={"name": "certs", "modules": ["backend"]})
    assert created.status_code == 201, created.text
    # A 90-day certificate with 2 days left (Caddy renews at 30): its renewal has failed.
    lasting = {"expires_in": timedelta(days=2), "lifetime": timedelta(days=90)}
    with https_server("certs.localhost", **lasting) as (port, certificate):
        async with stack.db.session() as session:
            server = (await session.exec(select(Server).where(col(Server.handle) == SERVER))).one()
            server.edge_ca = certificate  # the app answers, verified: only its dates are wrong
            project = await session.get(Project, created.json()["id"])
            assert project is not None
            project.chat_id = CHAT
            spec = {"source": "manifest", "runtime": "process", "service": "web", "port": port}
            release = Deployment(
                project_id=project.id,
                server_id=server.id,
                port=port,
                release="r1",
                status=DeploymentStatus.running,
                url=f"https://certs.localhost:{port}/",
                details={"spec": spec},
            )
            session.add_all([server, project, release])
            await session.commit()
        ticks = Ticks(stack.client, APP_HEALTH.schedule_id(stack.settings))
        for failures in (1, 2):
            [checked] = AppHealthOutput.model_validate(await ticks.tick()).checked
            assert (checked.up, checked.restarted) == (True, False), checked
            assert checked.certificate_days_left is not None
            assert 1.9 < checked.certificate_days_left <= 2
            assert len(checked.opened) == failures - 1  # the second in a row opens it
    [incident] = await incidents(stack)
    assert incident.kind == IncidentKind.certificate_expiring and incident.resolved_at is None
    assert "runs out in" in incident.title
    [note] = await eventually(lambda: chat_notes(stack.redis), "the project's chat to be told")
    assert note.note_id == f"incident-{incident.id}-opened"
