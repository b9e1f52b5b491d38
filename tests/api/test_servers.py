"""Servers through the API: admins add them (key encrypted, provisioning queued), everyone lists
them, a server with allocated ports stays; the key never leaves as it came in."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from redis.asyncio import Redis
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from core.contracts.provisioner import PROVISIONER_QUEUE, ProvisionerMessage
from core.crypto import Vault
from core.enums import ServerStatus
from core.settings import Settings
from db import secrets, servers
from db.engine import Database
from db.tables import OutboxMessage, PortAllocation, Project, Secret, Server
from tests.api.conftest import MakeClient


def private_key(kind: str = "ed25519", password: bytes | None = None) -> str:
    """A fresh private key's text: OpenSSH ed25519, or a traditional PEM RSA key."""
    if kind == "ed25519":
        # An OpenSSH key with a passphrase needs bcrypt, which cryptography lacks here.
        assert password is None, "use ssh_keygen() for an OpenSSH key with a passphrase"
        key = ed25519.Ed25519PrivateKey.generate()
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    else:
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        data = rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, encryption
        )
    return data.decode()


def ssh_keygen(directory: Path, passphrase: str = "") -> str:
    """A key as people make them, by ssh-keygen."""
    path = directory / f"id_{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "test", "-f", str(path)],
        check=True,
        timeout=30,
    )
    return path.read_text()


def public_key(text: str) -> str:
    loaded = serialization.load_ssh_private_key(text.encode(), password=None)
    return (
        loaded.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def key_body(text: str) -> str:
    """The base64 body of a key, which must not appear anywhere once it is stored."""
    lines = [line for line in text.strip().splitlines() if not line.startswith("-----")]
    return "".join(lines)


async def add(client: httpx.AsyncClient, handle: str = "web-1", **extra: Any) -> httpx.Response:
    body = {
        "handle": handle,
        "host": "127.0.0.1",
        "port": 2222,
        "ssh_user": "deploy",
        "private_key": private_key(),
        **extra,
    }
    return await client.post("/servers", json=body)


async def everything_in(database: Database, redis: Redis) -> str:
    """What the outbox and every Redis stream hold, as one text to search."""
    parts: list[str] = []
    async with database.session() as session:
        parts += [repr(m.fields) for m in (await session.exec(select(OutboxMessage))).all()]
    for key in await redis.keys("*"):
        if await redis.type(key) == b"stream":
            parts += [repr(fields) for _, fields in await redis.xrange(key)]
    return "\n".join(parts)


async def test_add_stores_the_key_encrypted_and_queues_provisioning(
    admin: httpx.AsyncClient, database: Database, redis: Redis, tmp_path: Path
) -> None:
    key = private_key()
    response = await add(admin, private_key=key)
    assert response.status_code == 201, response.text
    server = response.json()
    assert server["handle"] == "web-1" and server["host"] == "127.0.0.1"
    assert server["port"] == 2222 and server["ssh_user"] == "deploy"
    assert server["status"] == "NEW" and server["capacity"] is None
    assert server["key_ref"].startswith("secret:") and len(server["request_id"]) == 32
    assert key_body(key) not in response.text and "private_key" not in server

    entries = await redis.xrange(PROVISIONER_QUEUE)
    assert len(entries) == 1
    message = ProvisionerMessage.from_fields(entries[0][1])
    assert message.server_handle == "web-1" and message.request_id == server["request_id"]
    assert not message.force_reinstall and not message.is_recovery
    assert key_body(key) not in await everything_in(database, redis)

    async with database.session() as session:
        stored = (await session.exec(select(Secret))).one()
        assert stored.project_id is None and stored.name == "server:web-1"
        assert stored.kind == "ssh_key" and key_body(key) not in stored.ciphertext
        # What an activity gets to connect: the key decrypted with the home's key.
        vault = Vault.from_settings(Settings(home=tmp_path))
        access = await servers.ssh_access(session, vault, "web-1")
    assert (access.host, access.port, access.user) == ("127.0.0.1", 2222, "deploy")
    assert access.private_key.get_secret_value() == key.strip() + "\n"
    assert key_body(key) not in repr(access)


async def test_list_and_show_by_id_or_handle(
    admin: httpx.AsyncClient, make_client: MakeClient, user_key: str
) -> None:
    first = (await add(admin, "web-2")).json()
    second = (await add(admin, "web-1")).json()
    user = await make_client(user_key)
    listed = await user.get("/servers")
    assert listed.status_code == 200
    assert [s["handle"] for s in listed.json()] == ["web-1", "web-2"]
    assert "request_id" not in listed.json()[0]
    for ref in (first["id"], "web-2"):
        shown = await user.get(f"/servers/{ref}")
        assert shown.status_code == 200 and shown.json()["id"] == first["id"]
    missing = await user.get("/servers/nope")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert (await user.get("/servers", params={"status": "READY"})).json() == []
    new = await user.get("/servers", params={"status": "NEW"})
    assert {s["id"] for s in new.json()} == {first["id"], second["id"]}


async def test_only_admins_add_and_remove(
    admin: httpx.AsyncClient, make_client: MakeClient, user_key: str, redis: Redis
) -> None:
    user = await make_client(user_key)
    refused = await add(user)
    assert refused.status_code == 403, refused.text
    assert refused.json()["detail"] == "only an admin may do this"
    assert await redis.xrange(PROVISIONER_QUEUE) == []
    created = (await add(admin)).json()
    assert (await user.delete(f"/servers/{created['id']}")).status_code == 403
    anonymous = await make_client()
    assert (await anonymous.get("/servers")).status_code == 401


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"handle": "Web 1"}, "handle"),
        ({"handle": "-web"}, "handle"),
        ({"host": "a host"}, "host"),
        ({"port": 0}, "port"),
        ({"ssh_user": "1root"}, "ssh_user"),
        ({"extra": 1}, "extra"),
    ],
)
async def test_invalid_fields_are_422(
    admin: httpx.AsyncClient, change: dict[str, Any], field: str
) -> None:
    response = await add(admin, **change)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no ssh-keygen (openssh-client)")
async def test_what_is_not_a_usable_private_key_is_422_without_quoting_it(
    admin: httpx.AsyncClient, redis: Redis, tmp_path: Path
) -> None:
    key = private_key()
    cases = {
        public_key(key): "does not look like a private key",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAgarbage\n-----END OPENSSH PRIVATE KEY-----": (
            "not a readable OpenSSH or PEM private key"
        ),
        ssh_keygen(tmp_path, "pass phrase"): "protected by a passphrase",
        private_key("rsa", b"pass phrase"): "protected by a passphrase",
    }
    for text, reason in cases.items():
        response = await add(admin, private_key=text)
        assert response.status_code == 422, response.text
        assert reason in response.json()["detail"]
        assert key_body(text)[:40] not in response.text
    assert await redis.xrange(PROVISIONER_QUEUE) == []
    # A PEM RSA key with Windows line ends is fine, and so is what ssh-keygen makes.
    pem = private_key("rsa").replace("\n", "\r\n")
    assert (await add(admin, private_key=pem)).status_code == 201
    made = await add(admin, "made", private_key=ssh_keygen(tmp_path))
    assert made.status_code == 201, made.text


async def test_a_handle_is_taken_once(admin: httpx.AsyncClient, redis: Redis) -> None:
    assert (await add(admin)).status_code == 201
    again = await add(admin)
    assert again.status_code == 409 and "already exists" in again.json()["detail"]
    assert len(await redis.xrange(PROVISIONER_QUEUE)) == 1


async def test_remove_deletes_the_server_and_its_key_unless_ports_are_allocated(
    admin: httpx.AsyncClient, database: Database, project: dict[str, Any]
) -> None:
    kept = (await add(admin, "busy")).json()
    gone = (await add(admin, "idle")).json()
    async with database.session() as session:
        session.add(PortAllocation(server_id=kept["id"], port=8001, project_id=project["id"]))
        await session.commit()

    refused = await admin.delete("/servers/busy")
    assert refused.status_code == 409 and "allocated port" in refused.json()["detail"]
    assert (await admin.delete("/servers/idle")).status_code == 204
    assert (await admin.get(f"/servers/{gone['id']}")).status_code == 404
    assert (await admin.delete("/servers/idle")).status_code == 404
    async with database.session() as session:
        names = [s.name for s in (await session.exec(select(Secret))).all()]
    assert names == ["server:busy"]
    # The handle is free again.
    assert (await add(admin, "idle")).status_code == 201


async def test_set_status_records_what_provisioning_found(
    admin: httpx.AsyncClient, database: Database
) -> None:
    created = (await add(admin)).json()
    capacity = {"memory_mb": 2048, "cpus": 2, "disk_free_gb": 17.5}
    async with database.session() as session:
        await servers.set_status(session, created["id"], ServerStatus.provisioning)
        failed = await servers.set_status(session, "web-1", ServerStatus.failed, error="no sudo")
        assert failed.last_error == "no sudo"
        await servers.set_status(
            session, "web-1", ServerStatus.ready, capacity=capacity, checked=True
        )
    shown = (await admin.get("/servers/web-1")).json()
    assert shown["status"] == "READY" and shown["capacity"] == capacity
    assert shown["last_error"] is None and shown["last_checked_at"] is not None
    assert shown["updated_at"] > created["updated_at"]


async def test_concurrent_allocations_of_one_port_collide(
    admin: httpx.AsyncClient, database: Database, project: dict[str, Any]
) -> None:
    server = (await add(admin)).json()
    other = (await admin.post("/projects", json={"name": "other"})).json()

    async def take(port: int, project_id: str = project["id"]) -> bool:
        async with database.session() as session:
            session.add(PortAllocation(server_id=server["id"], port=port, project_id=project_id))
            try:
                await session.commit()
            except IntegrityError:
                return False
            return True

    results = await asyncio.gather(*(take(9000) for _ in range(5)))
    assert sorted(results) == [False, False, False, False, True]
    assert not await take(9001)  # one port per project on a server: its releases share it
    assert await take(9001, other["id"])


async def test_a_stored_key_resolves_by_reference_only(
    admin: httpx.AsyncClient, database: Database, tmp_path: Path, project: dict[str, Any]
) -> None:
    key = private_key("rsa")
    ref = (await add(admin, private_key=key)).json()["key_ref"]
    vault = Vault.from_settings(Settings(home=tmp_path))
    async with database.session() as session:
        assert (await secrets.resolve_secret_ref(session, vault, ref)).strip() == key.strip()
        with pytest.raises(ValueError, match="not a secret reference"):
            await secrets.resolve_secret_ref(session, vault, key)
        with pytest.raises(Exception, match="not found"):
            await secrets.resolve_secret_ref(session, vault, "secret:" + "0" * 32)
        assert (await session.exec(select(Server))).one().key_ref == ref
        # No project lists a server's key among its secrets.
        for project in (await session.exec(select(Project))).all():
            assert await secrets.list_secrets(session, project.id) == []


async def test_provisioning_again_queues_a_new_request(
    admin: httpx.AsyncClient, make_client: MakeClient, user_key: str, redis: Redis
) -> None:
    created = (await add(admin)).json()
    again = await admin.post("/servers/web-1/provision")
    assert again.status_code == 202, again.text
    body = again.json()
    assert body["id"] == created["id"] and body["status"] == "NEW"
    assert len(body["request_id"]) == 32 and body["request_id"] != created["request_id"]
    forced = await admin.post(f"/servers/{created['id']}/provision", json={"force_reinstall": True})
    assert forced.status_code == 202, forced.text

    messages = [ProvisionerMessage.from_fields(f) for _, f in await redis.xrange(PROVISIONER_QUEUE)]
    assert [m.request_id for m in messages] == [
        created["request_id"],
        body["request_id"],
        forced.json()["request_id"],
    ]
    assert [m.force_reinstall for m in messages] == [False, False, True]
    assert {m.server_handle for m in messages} == {"web-1"}
    assert not any(m.is_recovery for m in messages)

    user = await make_client(user_key)
    assert (await user.post("/servers/web-1/provision")).status_code == 403
    missing = await admin.post("/servers/nope/provision")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    wrong = await admin.post("/servers/web-1/provision", json={"reinstall": True})
    assert wrong.status_code == 422 and [e["field"] for e in wrong.json()["errors"]] == [
        "reinstall"
    ]
    assert len(await redis.xrange(PROVISIONER_QUEUE)) == 3


async def test_a_learned_host_key_is_kept_and_never_replaced(
    admin: httpx.AsyncClient, database: Database, tmp_path: Path
) -> None:
    await add(admin)
    first = "[127.0.0.1]:2222 ssh-ed25519 AAAAfirst"
    vault = Vault.from_settings(Settings(home=tmp_path))
    async with database.session() as session:
        assert (await servers.ssh_access(session, vault, "web-1")).known_hosts is None
        await servers.set_status(session, "web-1", ServerStatus.ready, known_hosts=first)
        # A later run (which checked that key) cannot swap it for another.
        await servers.set_status(
            session, "web-1", ServerStatus.ready, known_hosts="[127.0.0.1]:2222 ssh-rsa AAAAother"
        )
    async with database.session() as session:
        assert (await servers.ssh_access(session, vault, "web-1")).known_hosts == first
