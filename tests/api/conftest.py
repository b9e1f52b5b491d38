"""The API on real parts: each test's database (SQLite and PostgreSQL), Redis and Temporal."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
import uvicorn
from fastapi import FastAPI
from redis.asyncio import Redis
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from api.__main__ import bind_unix
from api.app import create_app
from api.deps import Runtime
from core.settings import Settings
from db.engine import Database
from db.users import ensure_admin_key
from testing.servers import free_port

MakeClient = Callable[..., Awaitable[httpx.AsyncClient]]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest_asyncio.fixture
async def app(
    database: Database, redis: Redis, temporal_client: Client, tmp_path: Path
) -> AsyncIterator[FastAPI]:
    """The app with its lifespan running (the outbox relay included)."""
    application = create_app(
        Settings(home=tmp_path),
        database=database,
        redis=redis,
        temporal=temporal_client,
        sse_ping=0.2,
        sse_wait=0.5,
    )
    async with application.router.lifespan_context(application):
        yield application


@contextlib.asynccontextmanager
async def probe_worker(client: Client, workflow: type, prefix: str) -> AsyncIterator[str]:
    """A worker of one stand-in workflow of a test module, on a queue of its own."""
    queue = f"{prefix}-{uuid.uuid4().hex[:8]}"
    # Unsandboxed: the probe lives in a test module the sandbox would re-import whole.
    async with Worker(
        client, task_queue=queue, workflows=[workflow], workflow_runner=UnsandboxedWorkflowRunner()
    ):
        yield queue


def runtime_of(app: FastAPI) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


@pytest_asyncio.fixture
async def admin_key(database: Database, tmp_path: Path) -> str:
    return await ensure_admin_key(database, tmp_path / "api_key")


@pytest_asyncio.fixture
async def make_client(app: FastAPI) -> AsyncIterator[MakeClient]:
    """Clients of the app in this process; ``key`` sets the Authorization header."""
    clients: list[httpx.AsyncClient] = []

    async def make(
        key: str | None = None, headers: dict[str, str] | None = None
    ) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app),
            base_url="http://api",
            headers={**(auth(key) if key else {}), **(headers or {})},
        )
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            await client.aclose()


@pytest_asyncio.fixture
async def admin(make_client: MakeClient, admin_key: str) -> httpx.AsyncClient:
    return await make_client(admin_key)


@pytest_asyncio.fixture
async def user_key(admin: httpx.AsyncClient) -> str:
    """The key of a user who is not an admin."""
    created = await admin.post("/users", json={"name": "dev"})
    assert created.status_code == 201, created.text
    key = await admin.post("/api-keys", json={"name": "dev", "user_id": created.json()["id"]})
    assert key.status_code == 201, key.text
    return str(key.json()["key"])


@pytest_asyncio.fixture
async def project(admin: httpx.AsyncClient) -> dict[str, Any]:
    response = await admin.post("/projects", json={"name": "shop", "description": "a shop"})
    assert response.status_code == 201, response.text
    return dict(response.json())


@contextlib.asynccontextmanager
async def api_with_temporal_at(
    database: Database, redis: Redis, home: Path, temporal_address: str
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app of its own whose Temporal is at ``temporal_address`` (one nothing listens on:
    Temporal away), and an admin's client of it."""
    app = create_app(
        Settings(home=home, temporal_address=temporal_address), database=database, redis=redis
    )
    key = await ensure_admin_key(database, home / "api_key")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://api", headers=auth(key)
        ) as admin,
    ):
        yield app, admin


@contextlib.asynccontextmanager
async def live_server(app: FastAPI, uds: Path | None = None) -> AsyncIterator[str]:
    """The app under a real uvicorn in this event loop: real sockets, so streams really stream.

    With ``uds`` it also listens on that Unix socket, bound as ``python -m api`` binds its own
    (keep the path short: at most 107 bytes)."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]  # pytest's own
    sockets = None if uds is None else [config.bind_socket(), bind_unix(uds)]
    serving = asyncio.create_task(server.serve(sockets))
    deadline = time.monotonic() + 10
    while not server.started:
        if serving.done():
            serving.result()
        assert time.monotonic() < deadline, "uvicorn did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 15)
        if uds is not None:
            uds.unlink(missing_ok=True)
