"""Servers: where deploys go. The SSH private key is a secret (``key_ref``), never a column.

Adding a server asks the provisioner to bootstrap it: a ``provisioner:queue`` message written
through the outbox in the same transaction as the server, so neither exists without the other.
Asking again later (``request_provisioning``) queues another message the same way.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, SecretStr
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.contracts.provisioner import PROVISIONER_QUEUE, ProvisionerMessage
from core.crypto import Vault
from core.enums import ServerStatus
from core.logging import get_logger
from db import outbox, secrets
from db.errors import Conflict, Invalid, NotFound
from db.tables import PortAllocation, Secret, SecretKind, Server, utcnow

log = get_logger(__name__)


class SshAccess(BaseModel):
    """What an SSH client needs to reach a server (the fields of activities.ansible.SshTarget)."""

    host: str
    port: int
    user: str
    private_key: SecretStr
    known_hosts: str | None = None  # the host key learned on first contact; None: not yet


def key_secret_name(handle: str) -> str:
    return f"server:{handle}"


def normalize_private_key(text: str) -> str:
    """The key as OpenSSH wants it in a file (LF line ends, a final newline), or 422.

    Messages never quote the key, and the parser's own errors are not passed on.
    """
    key = text.replace("\r\n", "\n").strip() + "\n"
    first = key.split("\n", 1)[0]
    if not (first.startswith("-----BEGIN ") and first.endswith("PRIVATE KEY-----")):
        raise Invalid(
            "private_key does not look like a private key: expected an OpenSSH or PEM key "
            "('-----BEGIN ... PRIVATE KEY-----'); was a public key given?"
        )
    data = key.encode("utf-8")
    try:
        if first == "-----BEGIN OPENSSH PRIVATE KEY-----":
            serialization.load_ssh_private_key(data, password=None)
        else:
            serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise Invalid(
            "private_key is protected by a passphrase; give a key without one (it is stored "
            "encrypted)"
        ) from None
    except Exception:  # ValueError, UnsupportedAlgorithm: the key is unusable either way
        raise Invalid("private_key is not a readable OpenSSH or PEM private key") from None
    return key


async def find_by_handle(session: AsyncSession, handle: str) -> Server | None:
    query = select(Server).where(func.lower(Server.handle) == handle.lower())
    return (await session.exec(query)).first()


async def find_by_host(session: AsyncSession, host: str) -> list[Server]:
    return list((await session.exec(select(Server).where(col(Server.host) == host))).all())


async def create_server(
    session: AsyncSession,
    vault: Vault,
    *,
    handle: str,
    host: str,
    port: int,
    ssh_user: str,
    private_key: str,
    apps_root: str | None,
    base_domain: str | None = None,
    edge: dict[str, Any] | None = None,
    database: dict[str, Any] | None = None,
) -> tuple[Server, ProvisionerMessage, int | None]:
    """Store the server, its key (encrypted) and the provision request in one commit.

    Returns the server, the message and its outbox id (to publish at once).
    """
    if await find_by_handle(session, handle) is not None:
        raise Conflict(f"a server named {handle!r} already exists")
    key = normalize_private_key(private_key)
    secret, _ = await secrets.stage_secret(
        session, vault, None, key_secret_name(handle), key, SecretKind.ssh_key
    )
    server = Server(
        handle=handle,
        host=host,
        port=port,
        ssh_user=ssh_user,
        key_ref=secrets.secret_ref(secret),
        apps_root=apps_root,
        base_domain=base_domain,
        edge=edge,
        database=database,
    )
    session.add(server)
    message = ProvisionerMessage(server_handle=server.handle)
    queued = outbox.enqueue(session, PROVISIONER_QUEUE, message.to_fields())
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(f"a server named {handle!r} already exists") from None
    log.info("server added", server_id=server.id, handle=server.handle, host=server.host)
    return server, message, queued.id


async def request_provisioning(
    session: AsyncSession, id_or_handle: str, *, force_reinstall: bool = False
) -> tuple[Server, ProvisionerMessage, int | None]:
    """Queue a provision request for an existing server through the outbox.

    Returns the server, the message and its outbox id (to publish at once).
    """
    server = await get_server(session, id_or_handle)
    message = ProvisionerMessage(server_handle=server.handle, force_reinstall=force_reinstall)
    queued = outbox.enqueue(session, PROVISIONER_QUEUE, message.to_fields())
    await session.commit()
    log.info(
        "server provisioning requested",
        server_id=server.id,
        handle=server.handle,
        request_id=message.request_id,
        force_reinstall=force_reinstall,
    )
    return server, message, queued.id


async def list_servers(session: AsyncSession, status: ServerStatus | None = None) -> list[Server]:
    query = select(Server)
    if status is not None:
        query = query.where(col(Server.status) == status)
    return list((await session.exec(query.order_by(col(Server.handle)))).all())


async def get_server(session: AsyncSession, id_or_handle: str) -> Server:
    server = await session.get(Server, id_or_handle) or await find_by_handle(session, id_or_handle)
    if server is None:
        raise NotFound(f"server {id_or_handle!r} not found")
    return server


async def remove_server(session: AsyncSession, id_or_handle: str) -> Server:
    """Delete a server and its key; 409 while any port on it is allocated."""
    server = await get_server(session, id_or_handle)
    query = select(func.count()).where(col(PortAllocation.server_id) == server.id)
    allocated = (await session.exec(query)).one()
    if allocated:
        raise Conflict(
            f"server {server.handle!r} has {allocated} allocated port(s); stop its deployments "
            "first"
        )
    key = await session.get(Secret, server.key_ref.removeprefix(secrets.REF_PREFIX))
    await session.delete(server)
    if key is not None:
        await session.delete(key)
    try:
        await session.commit()
    except IntegrityError:
        # A port was allocated between the check and the delete.
        await session.rollback()
        raise Conflict(f"server {server.handle!r} is in use; stop its deployments first") from None
    log.info("server removed", server_id=server.id, handle=server.handle)
    return server


async def set_status(
    session: AsyncSession,
    id_or_handle: str,
    status: ServerStatus,
    *,
    error: str | None = None,
    capacity: dict[str, Any] | None = None,
    checked: bool = False,
    known_hosts: str | None = None,
) -> Server:
    """Record what provisioning or a health check found; ``error`` replaces ``last_error``.

    ``capacity`` ({"memory_mb", "cpus", "disk_free_gb"}) is kept unless a new one is given;
    ``checked`` stamps ``last_checked_at``. ``known_hosts``, a host key learned on first
    contact, is stored only when the server has none: a known key is never replaced.
    """
    server = await get_server(session, id_or_handle)
    now = utcnow()
    server.status = status
    server.last_error = error
    if capacity is not None:
        server.capacity = dict(capacity)
    if checked:
        server.last_checked_at = now
    if known_hosts and not server.known_hosts:
        server.known_hosts = known_hosts
    server.updated_at = now
    session.add(server)
    await session.commit()
    log.info("server status", server_id=server.id, handle=server.handle, status=status.value)
    return server


async def handles_with_status(
    session: AsyncSession, statuses: tuple[ServerStatus, ...]
) -> list[str]:
    query = select(Server.handle).where(col(Server.status).in_(statuses))
    return list((await session.exec(query.order_by(col(Server.handle)))).all())


async def record_health(
    session: AsyncSession,
    server_id: str,
    status: ServerStatus,
    *,
    error: str | None,
    health: dict[str, Any],
) -> None:
    """What a health check found, in the caller's transaction (committed with the incidents it
    opens or resolves): the status, why (``last_error``) and the reading, stamped
    ``last_checked_at``. A server removed meanwhile is left alone."""
    server = await session.get(Server, server_id)
    if server is None:
        return
    now = utcnow()
    if server.status != status:
        log.info("server status", server_id=server.id, handle=server.handle, status=status.value)
    server.status = status
    server.last_error = error
    server.health = health
    server.last_checked_at = now
    server.updated_at = now
    session.add(server)


async def ssh_access(session: AsyncSession, vault: Vault, id_or_handle: str) -> SshAccess:
    """Host, port, user, the decrypted private key and the known host key: for the activity
    that connects."""
    server = await get_server(session, id_or_handle)
    key = await secrets.resolve_secret_ref(session, vault, server.key_ref)
    return SshAccess(
        host=server.host,
        port=server.port,
        user=server.ssh_user,
        private_key=SecretStr(key),
        known_hosts=server.known_hosts,
    )


async def learn_edge_ca(session: AsyncSession, server_id: str, certificate: str) -> None:
    """Keep the root certificate of the server's edge CA (public) as a deploy read it."""
    server = await session.get(Server, server_id)
    if server is None or server.edge_ca == certificate:
        return
    server.edge_ca = certificate
    server.updated_at = utcnow()
    session.add(server)
    await session.commit()


UNCHANGED: Any = object()  # update_server: a field the caller did not name


async def update_server(
    session: AsyncSession,
    id_or_handle: str,
    *,
    base_domain: str | None = UNCHANGED,
    edge: dict[str, Any] | None = UNCHANGED,
    database: dict[str, Any] | None = UNCHANGED,
) -> Server:
    """A new base domain, edge or database settings for the server; its apps get them with
    their next deploy."""
    server = await get_server(session, id_or_handle)
    if base_domain is not UNCHANGED:
        server.base_domain = base_domain
    if edge is not UNCHANGED:
        server.edge = dict(edge) if edge else None
    if database is not UNCHANGED:
        server.database = dict(database) if database else None
    server.updated_at = utcnow()
    session.add(server)
    await session.commit()
    log.info(
        "server updated",
        server_id=server.id,
        base_domain=server.base_domain,
        edge=server.edge,
        database=server.database,
    )
    return server
