"""What routes depend on, as ``Annotated`` aliases: the database session, the caller, services."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from redis.asyncio import Redis
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from api.problems import Forbidden, ServiceUnavailable, Unauthorized
from core import temporal
from core.contracts.base import NO_NUL, NUL
from core.crypto import Vault, VaultError
from core.logging import bind_context, get_logger
from core.settings import Settings
from db import projects, users
from db.engine import Database
from db.tables import Project, User
from db.tasks import TaskService

log = get_logger(__name__)

TEMPORAL_CONNECT_TIMEOUT = 10.0


@dataclass
class Runtime:
    """The parts one app instance runs on; kept on ``app.state.runtime``."""

    settings: Settings
    db: Database
    redis: Redis
    tasks: TaskService
    temporal: Client | None = None
    vault: Vault | None = None  # made on first need: that may create <home>/secret.key
    sse_ping: float = 15.0
    sse_wait: float = 5.0
    sse_streams: int = 0  # open event streams, so a test can see them close
    temporal_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def temporal_client(self) -> Client:
        """Connect on first need: the API serves everything else while Temporal is away."""
        if self.temporal is not None:
            return self.temporal
        async with self.temporal_lock:
            if self.temporal is None:
                try:
                    self.temporal = await asyncio.wait_for(
                        temporal.connect(self.settings), TEMPORAL_CONNECT_TIMEOUT
                    )
                except Exception as exc:
                    log.warning("cannot reach Temporal", error=str(exc))
                    address = self.settings.effective_temporal_address
                    raise ServiceUnavailable(
                        f"Temporal at {address} is not reachable; try again shortly"
                    ) from exc
        return self.temporal


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


AppRuntime = Annotated[Runtime, Depends(get_runtime)]


async def get_session(runtime: AppRuntime) -> AsyncIterator[AsyncSession]:
    async with runtime.db.session() as session:
        yield session


DbSession = Annotated[AsyncSession, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <API key>`")
_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="The API key in a header of its own"
)


async def current_user(
    request: Request,
    session: DbSession,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_api_key_header)],
) -> User:
    key = bearer.credentials if bearer is not None else header_key
    if not key:
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
    found = await users.authenticate(session, key.strip())
    if found is None:
        raise Unauthorized("the API key is invalid or revoked")
    user, api_key = found
    # A PO session's key: routes ask for it through ``KeyChat``.
    request.state.key_chat_id = api_key.chat_id
    bind_context(user_id=user.id)
    return user


CurrentUser = Annotated[User, Depends(current_user)]


async def text_without_nul(request: Request) -> None:
    """No NUL in the path or the query either (bodies: ``JsonInput``): a 422, before a lookup
    PostgreSQL would fail."""
    places: list[tuple[str, ...]] = [("path",)] if NUL in request.scope["path"] else []
    places += [
        ("query", name)
        for name, value in request.query_params.multi_items()
        if NUL in name or NUL in value
    ]
    if places:
        raise RequestValidationError(
            [{"type": "nul_character", "loc": place, "msg": NO_NUL} for place in places]
        )


async def one_value_per_query_parameter(request: Request) -> None:
    """A query parameter the route declares takes one value: given twice it is a 422, not the last
    value silently winning (none of the API's query parameters is a list)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    repeated = [name for name in _query_names(route) if len(request.query_params.getlist(name)) > 1]
    if repeated:
        raise RequestValidationError(
            [
                {
                    "type": "repeated_parameter",
                    "loc": ("query", name),
                    "msg": "given more than once; it takes one value",
                }
                for name in sorted(repeated)
            ]
        )


def _query_names(route: APIRoute) -> frozenset[str]:
    """The query parameters a route declares, its dependencies' included."""

    def names(dependant: Dependant) -> set[str]:
        found = {param.alias for param in dependant.query_params}
        for dependency in dependant.dependencies:
            found |= names(dependency)
        return found

    return frozenset(names(route.dependant))


async def key_chat(request: Request, user: CurrentUser) -> int | None:
    """The chat the caller's key is scoped to (a PO session's key), or None for a full key."""
    chat_id: int | None = getattr(request.state, "key_chat_id", None)
    return chat_id


KeyChat = Annotated[int | None, Depends(key_chat)]


async def full_key(chat_id: KeyChat) -> None:
    """For routes a session's key may not use: managing users and keys."""
    if chat_id is not None:
        raise Forbidden(f"the key of chat {chat_id}'s PO session may not do this")


async def admin_user(user: CurrentUser) -> User:
    if not user.is_admin:
        raise Forbidden("only an admin may do this")
    return user


AdminUser = Annotated[User, Depends(admin_user)]


def get_tasks(runtime: AppRuntime) -> TaskService:
    return runtime.tasks


Tasks = Annotated[TaskService, Depends(get_tasks)]


async def get_temporal(runtime: AppRuntime) -> Client:
    return await runtime.temporal_client()


TemporalClient = Annotated[Client, Depends(get_temporal)]


def get_vault(runtime: AppRuntime) -> Vault:
    """The key secrets are encrypted with: made on first need, a 503 when it cannot be read."""
    if runtime.vault is None:
        try:
            runtime.vault = Vault.from_settings(runtime.settings)
        except (VaultError, OSError) as exc:
            raise ServiceUnavailable(f"secrets cannot be stored: {exc}") from None
    return runtime.vault


VaultDep = Annotated[Vault, Depends(get_vault)]


async def path_project(project_id_or_name: str, session: DbSession) -> Project:
    """The project a route's ``{project_id_or_name}`` names (404 when none)."""
    return await projects.get_project(session, project_id_or_name)


PathProject = Annotated[Project, Depends(path_project)]
