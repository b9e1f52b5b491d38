"""The scheduled jobs through the API, on the Temporal dev server: each job of core.schedules
listed with its Schedule's state (or ``exists: false`` before `up` made it), paused and unpaused
by admins, as Temporal's own description shows.

Each test's app runs on a task queue of its own, so its Schedules' ids (``<queue>-<job>``) are
its own on the shared server; the test deletes them, and ends the runs they started, at the end.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from redis.asyncio import Redis
from temporalio.client import Client, ScheduleActionExecutionStartWorkflow, ScheduleHandle
from temporalio.service import RPCError, RPCStatusCode

from api.app import create_app
from core.schedules import JOBS, REAPER, SERVER_HEALTH
from core.settings import Settings
from db.engine import Database
from stack.prepare import ensure_schedule
from testing.servers import free_port
from testing.waiting import eventually
from testing.workflows import running_worker
from tests.api.conftest import MakeClient, api_with_temporal_at

PROBLEM_JSON = "application/problem+json"
DAY_S = 86_400


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # A day between runs: no tick of their own falls within a test (only the ones it triggers).
    queue = f"schedules-{uuid.uuid4().hex[:8]}"
    return Settings(
        home=tmp_path,
        temporal_task_queue=queue,
        reaper_interval_minutes=DAY_S / 60,
        server_health_interval_s=DAY_S / 2,
    )


@pytest_asyncio.fixture
async def app(
    settings: Settings, database: Database, redis: Redis, temporal_client: Client
) -> AsyncIterator[FastAPI]:
    application = create_app(settings, database=database, redis=redis, temporal=temporal_client)
    async with application.router.lifespan_context(application):
        yield application


@pytest_asyncio.fixture
async def made(
    temporal_client: Client, settings: Settings
) -> AsyncIterator[dict[str, ScheduleHandle]]:
    """The reaper's Schedule, made as `up` makes it; the other jobs' left unmade."""
    assert await ensure_schedule(temporal_client, settings, REAPER)
    handles = {REAPER.name: temporal_client.get_schedule_handle(REAPER.schedule_id(settings))}
    try:
        yield handles
    finally:
        for handle in handles.values():
            await remove_schedule(temporal_client, handle.id)


async def remove_schedule(client: Client, schedule_id: str) -> None:
    """Delete a Schedule of a test, and end the runs it started (no worker would)."""
    handle = client.get_schedule_handle(schedule_id)
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return
        raise
    for action in description.info.running_actions:
        assert isinstance(action, ScheduleActionExecutionStartWorkflow)
        with contextlib.suppress(RPCError):  # ended meanwhile
            await client.get_workflow_handle(action.workflow_id).terminate()
    await handle.delete()


async def listed(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    response = await client.get("/schedules")
    assert response.status_code == 200, response.text
    return {schedule["name"]: schedule for schedule in response.json()}


async def test_every_job_is_listed_with_its_schedule(
    admin: httpx.AsyncClient,
    make_client: MakeClient,
    user_key: str,
    made: dict[str, ScheduleHandle],
    settings: Settings,
) -> None:
    reaper = (await listed(admin))[REAPER.name]
    assert reaper["schedule_id"] == f"{settings.temporal_task_queue}-reaper"
    assert reaper["workflow"] == "ReaperWorkflow" and reaper["summary"] == REAPER.summary
    assert reaper["exists"] is True and reaper["paused"] is False and reaper["note"] is None
    assert reaper["interval_s"] == DAY_S and reaper["running"] is False
    assert reaper["last_run_at"] is None and reaper["last_run_workflow_id"] is None
    assert datetime.fromisoformat(reaper["next_run_at"]) > datetime.now(UTC)

    # A run now (no worker polls this queue: it stays running).
    before = datetime.now(UTC)
    await made[REAPER.name].trigger()
    reader = await make_client(user_key)  # reading is for everyone

    async def ran() -> dict[str, Any]:
        found = (await listed(reader))[REAPER.name]
        return found if found["running"] and found["last_run_at"] else {}

    reaper = await eventually(ran, "the triggered run")
    assert datetime.fromisoformat(reaper["last_run_at"]) >= before.replace(microsecond=0)
    assert reaper["last_run_workflow_id"].startswith(f"{reaper['schedule_id']}-")

    everything = await listed(admin)
    assert list(everything) == [job.name for job in JOBS]
    health = everything[SERVER_HEALTH.name]
    assert health == {
        "name": "server-health",
        "schedule_id": f"{settings.temporal_task_queue}-server-health",
        "workflow": SERVER_HEALTH.workflow,
        "summary": SERVER_HEALTH.summary,
        "exists": False,
        "interval_s": DAY_S / 2,
        "paused": False,
        "note": None,
        "last_run_at": None,
        "last_run_workflow_id": None,
        "next_run_at": None,
        "running": False,
    }


async def test_admins_pause_and_unpause(
    admin: httpx.AsyncClient, made: dict[str, ScheduleHandle]
) -> None:
    handle = made[REAPER.name]
    paused = await admin.post("/schedules/reaper/pause", json={"note": "disk work on the host"})
    assert paused.status_code == 200, paused.text
    assert paused.json()["paused"] is True and paused.json()["note"] == "disk work on the host"
    assert paused.json()["next_run_at"] is None
    state = (await handle.describe()).schedule.state
    assert state.paused is True and state.note == "disk work on the host"

    again = await admin.post("/schedules/reaper/pause")  # no body: the note says who
    assert again.status_code == 200, again.text
    assert again.json()["paused"] is True and again.json()["note"] == "paused by admin"

    unpaused = await admin.post("/schedules/reaper/unpause")
    assert unpaused.status_code == 200, unpaused.text
    assert unpaused.json()["paused"] is False and unpaused.json()["note"] == "unpaused by admin"
    assert unpaused.json()["next_run_at"] is not None
    state = (await handle.describe()).schedule.state
    assert state.paused is False and state.note == "unpaused by admin"
    assert (await listed(admin))[REAPER.name]["paused"] is False


async def test_what_cannot_be_paused(
    admin: httpx.AsyncClient,
    make_client: MakeClient,
    user_key: str,
    made: dict[str, ScheduleHandle],
) -> None:
    def problem(response: httpx.Response, status: int) -> str:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == PROBLEM_JSON
        return str(response.json()["detail"])

    assert "no scheduled job 'backup'" in problem(await admin.post("/schedules/backup/pause"), 404)
    assert "reaper" in problem(await admin.post("/schedules/backup/unpause"), 404)
    # A job whose Schedule `up` has not made.
    missing = problem(await admin.post("/schedules/server-health/pause"), 409)
    assert "orchestrator up" in missing

    user = await make_client(user_key)
    for action in ("pause", "unpause"):
        detail = problem(await user.post(f"/schedules/reaper/{action}"), 403)
        assert detail == "only an admin may do this"
    assert (await made[REAPER.name].describe()).schedule.state.paused is False

    for body in ({"note": ""}, {"note": "x" * 501}, {"reason": "x"}, {"note": 1}):
        issues = problem(await admin.post("/schedules/reaper/pause", json=body), 422)
        assert issues.startswith(("note", "reason"))
    assert (await made[REAPER.name].describe()).schedule.state.paused is False


async def test_temporal_away_is_a_503(database: Database, redis: Redis, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    async with api_with_temporal_at(database, redis, tmp_path, address) as (_, admin):
        for response in (
            await admin.get("/schedules"),
            await admin.post("/schedules/reaper/pause"),
            await admin.post("/schedules/reaper/unpause"),
        ):
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == PROBLEM_JSON
            assert address in response.json()["detail"]
        # Not Temporal's to say: an unknown job.
        assert (await admin.post("/schedules/backup/pause")).status_code == 404


async def test_an_admin_runs_a_job_now_and_sees_what_it_found(
    admin: httpx.AsyncClient,
    make_client: MakeClient,
    user_key: str,
    made: dict[str, ScheduleHandle],
    settings: Settings,
    database: Database,
    redis: Redis,
    temporal_client: Client,
) -> None:
    assert await ensure_schedule(temporal_client, settings, SERVER_HEALTH)
    made[SERVER_HEALTH.name] = temporal_client.get_schedule_handle(
        SERVER_HEALTH.schedule_id(settings)
    )
    async with running_worker(
        temporal_client, database, redis, settings.home, settings=settings,
        task_queue=settings.temporal_task_queue,
    ):  # fmt: skip
        ran = await admin.post("/schedules/server-health/run", json={"wait_s": 60})
        assert ran.status_code == 200, ran.text
        body = ran.json()
        assert body["workflow_id"].startswith(f"{settings.temporal_task_queue}-server-health-")
        # No server to check: the run's own report says so.
        assert (body["status"], body["result"]) == ("completed", {"checked": [], "errors": {}})
        assert (await listed(admin))[SERVER_HEALTH.name]["last_run_workflow_id"] == (
            body["workflow_id"]
        )

    user = await make_client(user_key)
    refused = await user.post("/schedules/server-health/run")
    assert refused.status_code == 403
    # No worker polls the reaper's queue now: its run goes on, and a second is refused.
    await made[REAPER.name].trigger()
    await eventually(lambda: _running(admin, REAPER.name), "the reaper's run")
    going = await admin.post("/schedules/reaper/run", json={"wait_s": 0})
    assert going.status_code == 409 and going.headers["content-type"] == PROBLEM_JSON
    assert "a run of reaper is going now" in going.json()["detail"]


async def _running(client: httpx.AsyncClient, name: str) -> bool:
    return bool((await listed(client))[name]["running"])
