"""Deployments: where a project's releases run, on which port, and which one serves.

A project holds one port on a server across its releases (``port_allocations``, unique per
server and port and per server and project), so its URL stays the same from release to release.
Two deploys racing for a port collide on the primary key: exactly one gets it, the other takes
the next. Releases move PENDING -> DEPLOYING -> RUNNING, and the one that served before becomes
SUPERSEDED; a release that fails leaves the serving one as it was.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.enums import DeploymentStatus, ServerStatus, TaskStatus, TaskType
from core.logging import get_logger
from db.errors import NotFound
from db.tables import Deployment, PortAllocation, Project, Server, Task, utcnow

log = get_logger(__name__)

# Deployments that hold (or may hold) the app's processes on their server.
LIVE = (DeploymentStatus.pending, DeploymentStatus.deploying, DeploymentStatus.running)


class NoRoom(Exception):
    """No READY server can take the app; the message says what to do."""


async def list_deployments(
    session: AsyncSession, project_id: str | None = None, limit: int = 50
) -> list[Deployment]:
    query = select(Deployment).order_by(col(Deployment.created_at).desc()).limit(limit)
    if project_id is not None:
        query = query.where(col(Deployment.project_id) == project_id)
    return list((await session.exec(query)).all())


async def get_deployment(session: AsyncSession, deployment_id: str) -> Deployment:
    deployment = await session.get(Deployment, deployment_id)
    if deployment is None:
        raise NotFound(f"deployment {deployment_id!r} not found")
    return deployment


async def serving(session: AsyncSession, project_id: str) -> Deployment | None:
    """The project's release that serves now (RUNNING), if any."""
    query = (
        select(Deployment)
        .where(
            col(Deployment.project_id) == project_id,
            col(Deployment.status) == DeploymentStatus.running,
        )
        .order_by(col(Deployment.updated_at).desc())
    )
    return (await session.exec(query)).first()


async def all_serving(session: AsyncSession) -> list[str]:
    """The ids of every project's live release on a server: what the app-health Schedule
    checks."""
    query = (
        select(Deployment.id)
        .where(
            col(Deployment.status) == DeploymentStatus.running,
            col(Deployment.server_id).is_not(None),
        )
        .order_by(col(Deployment.created_at))
    )
    return list((await session.exec(query)).all())


async def live_release(
    session: AsyncSession, deployment_id: str
) -> tuple[Deployment, Project, Server] | None:
    """The release with its project and server while it is live on one; else None."""
    deployment = await session.get(Deployment, deployment_id)
    if deployment is None or deployment.status != DeploymentStatus.running:
        return None
    server = await session.get(Server, deployment.server_id) if deployment.server_id else None
    project = await session.get(Project, deployment.project_id)
    if server is None or project is None:
        return None
    return deployment, project, server


async def previous_release(session: AsyncSession, current: Deployment) -> Deployment | None:
    """The release that served before ``current`` on its server: what a rollback brings back."""
    query = (
        select(Deployment)
        .where(
            col(Deployment.project_id) == current.project_id,
            col(Deployment.server_id) == current.server_id,
            col(Deployment.status) == DeploymentStatus.superseded,
            col(Deployment.release) != current.release,
            col(Deployment.created_at) <= current.created_at,
        )
        .order_by(col(Deployment.updated_at).desc())
    )
    return (await session.exec(query)).first()


async def waiting_for_secrets(session: AsyncSession, project_id: str) -> list[Task]:
    """The project's deploy tasks waiting for a person (they wait for secrets)."""
    query = select(Task).where(
        col(Task.project_id) == project_id,
        col(Task.type) == TaskType.deploy,
        col(Task.status) == TaskStatus.waiting_human,
    )
    return list((await session.exec(query)).all())


async def of_task(session: AsyncSession, task_id: str) -> Deployment | None:
    query = select(Deployment).where(col(Deployment.task_id) == task_id)
    return (await session.exec(query.order_by(col(Deployment.created_at).desc()))).first()


async def project_allocations(session: AsyncSession, project_id: str) -> list[PortAllocation]:
    query = select(PortAllocation).where(col(PortAllocation.project_id) == project_id)
    return list((await session.exec(query)).all())


async def servers_of_project(session: AsyncSession, project_id: str) -> list[Server]:
    """The servers the project holds a port on."""
    servers = []
    for allocation in await project_allocations(session, project_id):
        server = await session.get(Server, allocation.server_id)
        if server is not None:
            servers.append(server)
    return servers


async def choose_server(
    session: AsyncSession, project_id: str, app_memory_mb: int
) -> tuple[Server, PortAllocation | None]:
    """The server the project's release goes to, and the port it holds there already.

    The project's own server while it is READY or DEGRADED (its URL stays: a server short of
    disk still serves); else the READY server with the most room, judged by its memory and the
    apps it holds.
    """
    for allocation in await project_allocations(session, project_id):
        server = await session.get(Server, allocation.server_id)
        if server is not None and server.status in (ServerStatus.ready, ServerStatus.degraded):
            return server, allocation
    ready = (
        await session.exec(select(Server).where(col(Server.status) == ServerStatus.ready))
    ).all()
    if not ready:
        raise NoRoom(
            "no server is READY to deploy to: add one with `orchestrator server add` (it is "
            "provisioned, then READY)"
        )
    counts = dict(
        (
            await session.exec(
                select(PortAllocation.server_id, func.count()).group_by(
                    col(PortAllocation.server_id)
                )
            )
        ).all()
    )
    best: tuple[int, Server] | None = None
    for server in ready:
        room = _app_slots(server, app_memory_mb) - counts.get(server.id, 0)
        if room > 0 and (best is None or room > best[0]):
            best = (room, server)
    if best is None:
        names = ", ".join(sorted(s.handle for s in ready))
        raise NoRoom(
            f"no READY server has room for another app ({names} are full at "
            f"{app_memory_mb} MB an app): add a server, or undeploy a project"
        )
    return best[1], None


def _app_slots(server: Server, app_memory_mb: int) -> int:
    memory = int((server.capacity or {}).get("memory_mb") or 0)
    return max(1, memory // app_memory_mb) if memory else 1


async def allocate_port(
    session: AsyncSession,
    server: Server,
    project_id: str,
    ports: range,
    avoid: Collection[int] = (),
) -> PortAllocation:
    """Take the lowest free port of ``ports`` on ``server`` for the project (committed).

    Concurrent callers collide on the primary key; the loser takes the next port.
    """
    server_id, handle = server.id, server.handle
    for _ in range(len(ports)):
        taken = set(
            (
                await session.exec(
                    select(PortAllocation.port).where(col(PortAllocation.server_id) == server_id)
                )
            ).all()
        )
        port = next((p for p in ports if p not in taken and p not in avoid), None)
        if port is None:
            raise NoRoom(f"server {handle} has no free port in {ports.start}-{ports.stop - 1}")
        allocation = PortAllocation(server_id=server_id, port=port, project_id=project_id)
        session.add(allocation)
        try:
            await session.commit()
        except IntegrityError:
            await session.rollback()
            await session.refresh(server)  # the rollback expired the caller's row
            mine = await _allocation_on(session, server_id, project_id)
            if mine is not None:  # the project took one in a race with itself
                return mine
            continue
        log.info("port allocated", server=handle, port=port, project_id=project_id)
        return allocation
    raise NoRoom(f"server {handle} has no free port")


async def _allocation_on(
    session: AsyncSession, server_id: str, project_id: str
) -> PortAllocation | None:
    query = select(PortAllocation).where(
        col(PortAllocation.server_id) == server_id, col(PortAllocation.project_id) == project_id
    )
    return (await session.exec(query)).first()


async def free_port(session: AsyncSession, server_id: str, port: int) -> None:
    allocation = await session.get(PortAllocation, (server_id, port))
    if allocation is not None:
        await session.delete(allocation)
        await session.commit()


async def add_release(
    session: AsyncSession,
    *,
    project_id: str,
    task_id: str,
    server: Server,
    port: int,
    release: str,
    commit_sha: str | None,
    details: dict[str, Any],
) -> Deployment:
    """The task's release row (PENDING), or the one an earlier attempt wrote, moved to ``port``."""
    deployment = await of_task(session, task_id)
    if deployment is None:
        deployment = Deployment(project_id=project_id, task_id=task_id, release=release, port=port)
    deployment.server_id = server.id
    deployment.port = port
    deployment.commit_sha = commit_sha
    deployment.details = {**(deployment.details or {}), **details, "server": server.handle}
    deployment.updated_at = utcnow()
    session.add(deployment)
    await session.commit()
    return deployment


async def set_status(
    session: AsyncSession,
    deployment_id: str,
    status: DeploymentStatus,
    *,
    url: str | None = None,
    error: str | None = None,
    details: dict[str, Any] | None = None,
) -> Deployment:
    deployment = await get_deployment(session, deployment_id)
    deployment.status = status
    deployment.error = error
    if url is not None:
        deployment.url = url
    if details:
        deployment.details = {**(deployment.details or {}), **details}
    deployment.updated_at = utcnow()
    session.add(deployment)
    await session.commit()
    return deployment


async def promote(session: AsyncSession, deployment_id: str, url: str) -> Deployment:
    """The release serves: RUNNING with its URL; the project's other live releases on its server
    are SUPERSEDED (the playbook stopped them) and the port points at this one."""
    deployment = await get_deployment(session, deployment_id)
    now = utcnow()
    await session.exec(
        update(Deployment)
        .where(
            col(Deployment.project_id) == deployment.project_id,
            col(Deployment.id) != deployment.id,
            col(Deployment.status).in_(LIVE),
        )
        .values(status=DeploymentStatus.superseded, updated_at=now)
    )
    deployment.status = DeploymentStatus.running
    deployment.url = url
    deployment.error = None
    deployment.updated_at = now
    session.add(deployment)
    if deployment.server_id is not None:
        allocation = await session.get(PortAllocation, (deployment.server_id, deployment.port))
        if allocation is not None:
            allocation.deployment_id = deployment.id
            session.add(allocation)
    await session.commit()
    log.info("release serving", deployment_id=deployment.id, release=deployment.release, url=url)
    return deployment


async def stopped(session: AsyncSession, project_id: str, *, release_ports: bool) -> int:
    """Every live release of the project STOPPED; with ``release_ports`` its ports freed too.
    Returns how many releases stopped."""
    result = await session.exec(
        update(Deployment)
        .where(col(Deployment.project_id) == project_id, col(Deployment.status).in_(LIVE))
        .values(status=DeploymentStatus.stopped, updated_at=utcnow())
    )
    if release_ports:
        for allocation in await project_allocations(session, project_id):
            await session.delete(allocation)
    await session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
