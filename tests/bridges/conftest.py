from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from temporalio.client import Client

from bridges.consumer import Bridge, Route
from bridges.routes import routes
from core.settings import Settings

StartBridge = Callable[..., Awaitable[Bridge]]


@pytest.fixture
def task_queue() -> str:
    # No worker polls it: a started run stays RUNNING and visible, which is all the bridge owes.
    return f"bridges-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def bridge_routes(task_queue: str) -> list[Route]:
    return routes(Settings(temporal_task_queue=task_queue))


@pytest_asyncio.fixture
async def start_bridge(
    redis: Redis, temporal_client: Client, bridge_routes: list[Route]
) -> AsyncIterator[StartBridge]:
    """Run bridges in this event loop; every one is stopped (and must stop) at teardown."""
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(route_list: list[Route] | None = None, **options: Any) -> Bridge:
        options = {"claim_idle_ms": 500, "block_ms": 100, **options}
        bridge = Bridge(redis, temporal_client, route_list or bridge_routes, **options)
        stop = asyncio.Event()
        task = asyncio.create_task(bridge.run(stop))
        running.append((stop, task))
        await asyncio.wait_for(bridge.ready.wait(), 10)
        return bridge

    try:
        yield start
    finally:
        for stop, _ in running:
            stop.set()
        for _, task in running:
            await asyncio.wait_for(task, 15)
