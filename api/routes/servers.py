"""Servers deploys go to. Adding one stores its SSH key encrypted and asks for provisioning;
admins may ask for it again later."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import Field

from api.deps import AdminUser, AppRuntime, DbSession, Runtime, VaultDep
from api.problems import problem_responses
from api.schemas import RequestBody, ServerCreate, ServerCreated, ServerRead, ServerUpdate
from core.enums import ServerStatus
from core.logging import get_logger
from db import outbox, servers
from db.tables import Server

log = get_logger(__name__)

router = APIRouter(prefix="/servers", tags=["servers"])


class ProvisionOptions(RequestBody):
    force_reinstall: bool = Field(
        default=False,
        description="Install what deploys need and the server lacks (python3, GNU tar, gzip) "
        "with apt-get; by default provisioning only checks for them",
    )


async def queued_answer(
    runtime: Runtime, server: Server, request_id: str, queued: int | None
) -> ServerCreated:
    """Send the committed provision request at once, and answer with the server and its id."""
    try:
        await outbox.publish(runtime.db, runtime.redis, [queued] if queued else None)
    except Exception as exc:  # committed: the relay sends it later
        log.warning("outbox publish deferred", error=str(exc))
    read = ServerRead.model_validate(server)
    return ServerCreated(**read.model_dump(), request_id=request_id)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Add a server (admins): its key is stored encrypted, then it is provisioned",
    responses=problem_responses(403, 409),
)
async def add_server(
    data: ServerCreate, _: AdminUser, session: DbSession, runtime: AppRuntime, vault: VaultDep
) -> ServerCreated:
    server, message, queued = await servers.create_server(
        session,
        vault,
        handle=data.handle,
        host=data.host,
        port=data.port,
        ssh_user=data.ssh_user,
        private_key=data.private_key.get_secret_value(),
        apps_root=data.apps_root,
        base_domain=data.base_domain,
        edge=data.edge.model_dump() if data.edge else None,
        database=data.database.model_dump() if data.database else None,
    )
    return await queued_answer(runtime, server, message.request_id, queued)


@router.post(
    "/{id_or_handle}/provision",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Provision a server again (admins): READY with its capacity, or FAILED with why",
    responses=problem_responses(403, 404),
)
async def provision_server(
    id_or_handle: str,
    _: AdminUser,
    session: DbSession,
    runtime: AppRuntime,
    options: ProvisionOptions | None = None,
) -> ServerCreated:
    force = options.force_reinstall if options else False
    server, message, queued = await servers.request_provisioning(
        session, id_or_handle, force_reinstall=force
    )
    return await queued_answer(runtime, server, message.request_id, queued)


@router.get("", summary="All servers, by handle")
async def list_servers(
    session: DbSession,
    state: Annotated[ServerStatus | None, Query(alias="status", description="Only these")] = None,
) -> list[ServerRead]:
    return [ServerRead.model_validate(s) for s in await servers.list_servers(session, state)]


@router.get(
    "/{id_or_handle}", summary="One server, by id or handle", responses=problem_responses(404)
)
async def get_server(id_or_handle: str, session: DbSession) -> ServerRead:
    return ServerRead.model_validate(await servers.get_server(session, id_or_handle))


@router.delete(
    "/{id_or_handle}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a server and its key (admins); refused while ports on it are allocated",
    responses=problem_responses(403, 404, 409),
)
async def remove_server(id_or_handle: str, _: AdminUser, session: DbSession) -> None:
    await servers.remove_server(session, id_or_handle)


@router.patch(
    "/{id_or_handle}",
    summary="Change a server's base domain, edge or database settings (admins); its apps get "
    "them on their next deploy",
    responses=problem_responses(403, 404),
)
async def update_server(
    id_or_handle: str, data: ServerUpdate, _: AdminUser, session: DbSession
) -> ServerRead:
    fields = data.model_dump(exclude_unset=True)
    server = await servers.update_server(
        session,
        id_or_handle,
        base_domain=fields.get("base_domain", servers.UNCHANGED),
        edge=fields.get("edge", servers.UNCHANGED),
        database=fields.get("database", servers.UNCHANGED),
    )
    return ServerRead.model_validate(server)
