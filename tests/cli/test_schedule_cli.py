"""``orchestrator schedule`` against a real API process and the Temporal dev server: the jobs
listed with their Schedules, paused and unpaused by an admin (as Temporal's own description
shows), refused to others, with --json everywhere and the exit codes of the other commands.

The API of this module runs on a task queue of its own, so its Schedules (``<queue>-<job>``) are
its own on the shared server; they are deleted at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio
from temporalio.client import Client, ScheduleHandle

from core.schedules import JOBS, REAPER, SERVER_HEALTH
from core.settings import Settings
from stack.prepare import ensure_schedule
from tests.api.test_schedules import remove_schedule
from tests.cli.conftest import Api, Cli

QUEUE = f"cli-schedules-{uuid.uuid4().hex[:8]}"
# A day between runs: no tick of their own falls within the tests.
ENVIRONMENT = {
    "ORCHESTRATOR_TEMPORAL_TASK_QUEUE": QUEUE,
    "ORCHESTRATOR_REAPER_INTERVAL_MINUTES": "1440",
    "ORCHESTRATOR_SERVER_HEALTH_INTERVAL_S": "86400",
    "ORCHESTRATOR_APP_HEALTH_INTERVAL_S": "86400",
}
SETTINGS = Settings(
    temporal_task_queue=QUEUE,
    reaper_interval_minutes=1440,
    server_health_interval_s=86_400,
    app_health_interval_s=86_400,
)


@pytest.fixture(scope="module")
def own_queue() -> Iterator[None]:
    """The API (and `stack.prepare` before it) of this module on a task queue of its own."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ENVIRONMENT.items():
            patch.setenv(name, value)
        yield


@pytest.fixture(scope="module")
def api(own_queue: None, api: Api) -> Api:
    return api


@pytest_asyncio.fixture
async def reaper(temporal_client: Client, api: Api) -> AsyncIterator[ScheduleHandle]:
    """The reaper's Schedule as `up` makes it (its prepare step made it already, unless an
    earlier test deleted it); the server checks' not made."""
    await ensure_schedule(temporal_client, SETTINGS, REAPER)
    await remove_schedule(temporal_client, SERVER_HEALTH.schedule_id(SETTINGS))
    try:
        yield temporal_client.get_schedule_handle(REAPER.schedule_id(SETTINGS))
    finally:
        for job in JOBS:
            await remove_schedule(temporal_client, job.schedule_id(SETTINGS))


async def test_list_pause_unpause(cli: Cli, reaper: ScheduleHandle) -> None:
    listed = cli.json("schedule", "list")
    assert [schedule["name"] for schedule in listed] == [job.name for job in JOBS]
    jobs = {schedule["name"]: schedule for schedule in listed}
    assert jobs["reaper"]["schedule_id"] == f"{QUEUE}-reaper" and jobs["reaper"]["exists"]
    assert jobs["reaper"]["paused"] is False and jobs["reaper"]["interval_s"] == 86_400
    assert jobs["server-health"]["exists"] is False

    table = cli("schedule", "list", COLUMNS="200")
    assert table.exit_code == 0, table.output
    assert "reaper" in table.stdout and "24 h" in table.stdout and "active" in table.stdout
    assert "not made" in table.stdout and REAPER.summary in table.stdout

    paused = cli.json("schedule", "pause", "reaper", "--note", "host maintenance")
    assert paused["paused"] is True and paused["note"] == "host maintenance"
    state = (await reaper.describe()).schedule.state
    assert state.paused is True and state.note == "host maintenance"
    table = cli("schedule", "list", COLUMNS="200")
    assert "paused: host maintenance" in table.stdout

    unpaused = cli("schedule", "unpause", "reaper")
    assert unpaused.exit_code == 0, unpaused.output
    assert "Schedule reaper" in unpaused.stdout and "runs again" in unpaused.stdout
    assert (await reaper.describe()).schedule.state.paused is False

    human = cli("schedule", "pause", "reaper")
    assert human.exit_code == 0 and "paused: paused by admin" in human.stdout
    assert cli.json("schedule", "unpause", "reaper")["note"] == "unpaused by admin"


async def test_exit_codes(cli: Cli, api: Api, reaper: ScheduleHandle) -> None:
    unknown = cli.json("schedule", "pause", "backup", expect=3)["error"]
    assert unknown["status"] == 404 and "reaper" in unknown["detail"]
    assert cli("schedule", "unpause", "backup").exit_code == 3
    unmade = cli.json("schedule", "pause", "server-health", expect=1)["error"]
    assert unmade["status"] == 409 and "orchestrator up" in unmade["detail"]

    admin = {"Authorization": f"Bearer {api.settings().read_api_key()}"}
    async with httpx.AsyncClient(base_url=api.url, headers=admin) as http:
        user = (await http.post("/users", json={"name": f"dev-{uuid.uuid4().hex[:6]}"})).json()
        made = await http.post("/api-keys", json={"name": "k", "user_id": user["id"]})
        key = made.json()["key"]
    refused = cli.json("schedule", "pause", "reaper", expect=1, ORCHESTRATOR_API_KEY=key)
    assert refused["error"]["status"] == 403
    assert (await reaper.describe()).schedule.state.paused is False
    assert len(cli.json("schedule", "list", ORCHESTRATOR_API_KEY=key)) == len(JOBS)
