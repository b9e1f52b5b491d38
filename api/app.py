"""The FastAPI application: ``create_app()`` wires settings, parts, routes and error handling."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

import structlog
from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.engine import make_url
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import Client

from api import problems
from api.deps import Runtime, current_user, one_value_per_query_parameter, text_without_nul
from api.routes import (
    api_keys,
    chats,
    deployments,
    domains,
    health,
    incidents,
    projects,
    pull_requests,
    schedules,
    secrets,
    servers,
    tasks,
    usage,
    users,
)
from core.ids import new_id
from core.logging import bound_context, get_logger
from core.settings import Settings
from db import outbox
from db.engine import Database
from db.tasks import TaskService

log = get_logger(__name__)
access_log = get_logger("api.access")

DESCRIPTION = """
The control plane of codegen-orchestrator: projects, tasks and their progress.

Creating a task answers at once with its Temporal workflow id (`engineering-<task id>`); the work
itself runs as a durable workflow, started from the `engineering:queue` Redis stream.

Every route but `/health` needs an API key: `Authorization: Bearer <key>` (or `X-API-Key`).
Errors are `application/problem+json` (RFC 9457).

Text may not contain NUL (U+0000), in a body, a path or a query: such a request is refused with
422.
"""

# What a client may send as X-Correlation-ID; anything else is replaced, not logged verbatim.
_CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _package_version() -> str:
    try:
        return version("codegen-orchestrator")
    except PackageNotFoundError:
        return "0.0.0"


class RequestContext:
    """Binds a correlation id to the log context of each request, and writes the access log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-correlation-id")
        valid = given if given and _CORRELATION_ID.match(given) else None
        correlation_id = valid or new_id()
        # Only an id the client chose ties a new task to the client's conversation.
        scope.setdefault("state", {})["client_correlation_id"] = valid
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Correlation-ID", correlation_id)
            await send(message)

        with bound_context(correlation_id=correlation_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                access_log.info(
                    "request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 1),
                    client=scope["client"][0] if scope.get("client") else None,
                )
                # Routes bind these; they must not leak into the next request on this task.
                structlog.contextvars.unbind_contextvars("user_id", "task_id", "workflow_id")


def create_app(
    settings: Settings | None = None,
    *,
    database: Database | None = None,
    redis: Redis | None = None,
    temporal: Client | None = None,
    sse_ping: float = 15.0,
    sse_wait: float = 5.0,
) -> FastAPI:
    """The API. Parts given here belong to the caller; missing ones are made and closed here.

    ``sse_ping`` is the keep-alive interval of event streams; ``sse_wait`` how long a stream waits
    on Redis before it re-reads the database anyway.
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = database or Database(settings.effective_database_url)
        cache = redis or Redis.from_url(settings.effective_redis_url)
        runtime = Runtime(
            settings=settings,
            db=db,
            redis=cache,
            tasks=TaskService(db, cache),
            temporal=temporal,
            sse_ping=sse_ping,
            sse_wait=sse_wait,
        )
        app.state.runtime = runtime
        relay: asyncio.Task[None] | None = None
        try:
            async with db.session() as session:  # fail fast on a wrong DATABASE_URL
                await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
            # Sends what a crash between a commit and its XADD left in the outbox.
            relay = asyncio.create_task(outbox.relay_forever(db, cache), name="outbox-relay")
            database_url = make_url(db.url).render_as_string(hide_password=True)
            log.info("api started", database=database_url)
            yield
        finally:
            if relay is not None:
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay
            if redis is None:
                await cache.aclose()
            if database is None:
                await db.dispose()

    app = FastAPIOffline(
        title="codegen-orchestrator",
        version=_package_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        static_url="/docs-static",
        openapi_tags=[
            {"name": "health", "description": "Liveness, without a key"},
            {"name": "users", "description": "Who calls; admins manage users"},
            {"name": "api-keys", "description": "Keys for the CLI, the bot and agents"},
            {"name": "projects", "description": "What the pipelines work on"},
            {"name": "tasks", "description": "Units of asynchronous work and their progress"},
            {"name": "pull-requests", "description": "What engineering tasks delivered"},
            {"name": "chats", "description": "Telegram chats and their Product Owner sessions"},
            {"name": "servers", "description": "Machines deploys go to, reached over SSH"},
            {"name": "secrets", "description": "A project's secrets: names out, values only in"},
            {"name": "deployments", "description": "Releases deploy tasks put on servers"},
            {"name": "domains", "description": "Names a project's app is served at over HTTPS"},
            {"name": "incidents", "description": "What the scheduled checks found wrong"},
            {"name": "schedules", "description": "The scheduled jobs: admins pause and unpause"},
            {"name": "usage", "description": "Model calls, Worker minutes, deploys per project"},
        ],
    )
    problems.install(app)
    app.add_middleware(RequestContext)
    app.include_router(health.router)
    routers = (
        users,
        api_keys,
        projects,
        tasks,
        pull_requests,
        chats,
        servers,
        secrets,
        deployments,
        domains,
        incidents,
        schedules,
        usage,
    )
    for module in routers:
        # Authentication on the router: a route added later cannot forget it.
        app.include_router(
            module.router,
            dependencies=[
                Depends(current_user),
                Depends(text_without_nul),
                Depends(one_value_per_query_parameter),
            ],
            responses=problems.problem_responses(401, 422),
        )
    return app
