"""GET /tasks/{id}/events as Server-Sent Events, over a real socket: stored, live, the end."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from api.schemas import TaskEventRead
from core.enums import EventType, TaskStatus
from db.tables import TaskEventRow
from tests.api.conftest import auth, live_server, runtime_of
from tests.api.test_tasks import create_task

SSE = {"Accept": "text/event-stream"}


class EventReader:
    """Reads an SSE response one event (or keep-alive comment) at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()
        self.pings = 0

    async def next_event(self, seconds: float = 10.0) -> dict[str, str] | None:
        """The next event's fields; None when the stream has ended."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(seconds):
            async for line in self.lines:
                if line.startswith(":"):
                    self.pings += 1
                elif line:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
                elif fields:
                    return fields
        return None

    async def next_task_event(self) -> TaskEventRead:
        fields = await self.next_event()
        assert fields is not None, "the stream ended early"
        assert fields["event"] == "task_event"
        event = TaskEventRead.model_validate(json.loads(fields["data"]))
        assert fields["id"] == str(event.seq)
        return event

    async def wait_for_ping(self, seconds: float = 10.0) -> None:
        seen = self.pings
        async with asyncio.timeout(seconds):
            async for line in self.lines:
                if line.startswith(":"):
                    self.pings += 1
                if self.pings > seen:
                    return


@asynccontextmanager
async def event_stream(
    base_url: str, key: str, task_id: str, after: int | None = None, **headers: str
) -> AsyncIterator[tuple[httpx.Response, EventReader]]:
    params = {"after": after} if after is not None else None
    async with (
        httpx.AsyncClient(base_url=base_url, headers=auth(key), timeout=30) as client,
        client.stream(
            "GET", f"/tasks/{task_id}/events", params=params, headers={**SSE, **headers}
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        yield response, EventReader(response)


async def test_stored_then_live_then_the_end(
    app: FastAPI, admin: httpx.AsyncClient, admin_key: str, project: dict[str, Any]
) -> None:
    task = await create_task(admin, project)
    tasks = runtime_of(app).tasks
    await tasks.start(task["id"])
    await tasks.add_event(task["id"], EventType.progress, "planning", stage="plan", progress=0.1)
    async with live_server(app) as url, event_stream(url, admin_key, task["id"]) as (_, reader):
        assert (await reader.next_task_event()).type == EventType.started
        stored = await reader.next_task_event()
        assert (stored.seq, stored.message, stored.progress) == (2, "planning", 0.1)
        await reader.wait_for_ping()  # nothing new yet: the stream stays open and alive

        await tasks.add_event(task["id"], EventType.progress, "coding", stage="dev", progress=0.5)
        live = await reader.next_task_event()
        assert (live.seq, live.message, live.stage) == (3, "coding", "dev")

        await tasks.finish(task["id"], TaskStatus.completed, message="done", result={"pr": 1})
        final = await reader.next_task_event()
        assert (final.seq, final.type, final.status) == (4, EventType.completed, "COMPLETED")
        assert final.data == {"result": {"pr": 1}}
        assert await reader.next_event() is None  # the server ended the stream


async def test_after_and_last_event_id(
    app: FastAPI, admin: httpx.AsyncClient, admin_key: str, project: dict[str, Any]
) -> None:
    task = await create_task(admin, project)
    tasks = runtime_of(app).tasks
    await tasks.start(task["id"])
    await tasks.add_event(task["id"], EventType.progress, "half", progress=0.5)
    await tasks.finish(task["id"], TaskStatus.failed, message="tests failed", error="3 failures")
    async with live_server(app) as url:
        async with event_stream(url, admin_key, task["id"], after=1) as (_, reader):
            assert [(await reader.next_task_event()).seq for _ in range(2)] == [2, 3]
            assert await reader.next_event() is None
        # A reconnecting EventSource sends the last id it saw; a finished task then ends at once.
        async with event_stream(url, admin_key, task["id"], **{"Last-Event-ID": "3"}) as (_, r):
            assert await r.next_event() is None


async def test_a_client_that_leaves_ends_its_stream(
    app: FastAPI, admin: httpx.AsyncClient, admin_key: str, project: dict[str, Any]
) -> None:
    task = await create_task(admin, project)
    runtime = runtime_of(app)
    await runtime.tasks.start(task["id"])
    async with live_server(app) as url:
        async with event_stream(url, admin_key, task["id"]) as (_, reader):
            assert (await reader.next_task_event()).type == EventType.started
            assert runtime.sse_streams == 1
        deadline = time.monotonic() + 10
        while runtime.sse_streams:  # the server notices the closed socket and stops reading
            assert time.monotonic() < deadline, "the stream outlived its client"
            await asyncio.sleep(0.05)


async def test_events_without_redis_progress_are_still_delivered(
    app: FastAPI, admin: httpx.AsyncClient, admin_key: str, project: dict[str, Any]
) -> None:
    """The database is the record: a stream follows it even when no wake-up comes from Redis."""
    task = await create_task(admin, project)
    runtime = runtime_of(app)
    await runtime.tasks.start(task["id"])
    async with live_server(app) as url, event_stream(url, admin_key, task["id"]) as (_, reader):
        assert (await reader.next_task_event()).seq == 1
        await runtime.redis.delete(f"task_progress:{task['id']}")
        async with runtime.db.session() as session:  # as another process would, without XADD
            session.add(
                TaskEventRow(
                    task_id=task["id"],
                    seq=2,
                    type=EventType.progress,
                    status=TaskStatus.running,
                    message="quiet",
                )
            )
            await session.commit()
        assert (await reader.next_task_event()).message == "quiet"
