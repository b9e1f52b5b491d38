"""Provisioning end to end: a server added as the API adds it, its ``provisioner:queue`` message
taken by the real bridge route, ``ProvisionWorkflow`` on the real worker (real Temporal dev
server, Redis, SQLite), provision.yml run by ansible-runner over SSH against a real sshd on
loopback, so the server provisioned is this very machine."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError

from core.contracts.provisioner import (
    PROVISIONER_QUEUE,
    PROVISIONER_RESULT_TTL_SECONDS,
    ProvisionerMessage,
    ProvisionerResult,
    provisioner_result_key,
)
from core.contracts.workflows import ProvisionOutput
from core.crypto import Vault
from core.enums import ServerStatus
from core.ids import provision_workflow_id
from core.settings import Settings
from db import outbox, servers
from db.engine import Database
from db.tables import Server
from testing.bridges import acked, publish, runs_of
from testing.logs import logs_to
from testing.servers import free_port
from testing.ssh_host import SshHost
from testing.waiting import eventually
from testing.workflows import running_bridge, running_worker
from tests.api.test_servers import everything_in

# A playbook run over SSH to this machine takes seconds; the first on a cold machine, longer.
WITHIN = 120


@dataclass
class Provisioner:
    """The parts a provisioning goes through, as the stack runs them."""

    client: Client
    db: Database
    redis: Redis
    vault: Vault
    home: Path

    async def add(self, sshd: SshHost, *, port: int | None = None) -> ProvisionerMessage:
        """Add a server as ``POST /servers`` does: the row, its key, the message in the outbox.
        The message stays in the outbox: callers send it (``send``) or deliver it themselves."""
        async with self.db.session() as session:
            _, message, _ = await servers.create_server(
                session,
                self.vault,
                handle=f"web-{uuid.uuid4().hex[:8]}",
                host=sshd.host,
                port=port or sshd.port,
                ssh_user=sshd.user,
                private_key=sshd.private_key,
                apps_root=None,
            )
        return message

    async def send(self) -> None:
        """What the API's outbox relay does: XADD every committed message."""
        await outbox.publish(self.db, self.redis)

    async def again(self, handle: str) -> ProvisionerMessage:
        """``POST /servers/{handle}/provision``: a new request, sent at once."""
        async with self.db.session() as session:
            _, message, _ = await servers.request_provisioning(session, handle)
        await self.send()
        return message

    async def result(self, message: ProvisionerMessage) -> ProvisionerResult:
        key = provisioner_result_key(message.request_id)
        raw = await eventually(lambda: self.redis.get(key), f"the result {key}", within=WITHIN)
        return ProvisionerResult.model_validate_json(raw)

    async def server(self, handle: str) -> Server:
        async with self.db.session() as session:
            return await servers.get_server(session, handle)

    async def outcome(self, message: ProvisionerMessage) -> ProvisionOutput:
        """What the run that took the message returned (its result is published just before)."""
        await self.result(message)
        workflow_id = provision_workflow_id(message.server_handle)
        handle = self.client.get_workflow_handle(workflow_id, result_type=ProvisionOutput)
        return await handle.result()


@pytest_asyncio.fixture
async def provisioner(
    temporal_client: Client, sqlite_database: Database, redis: Redis, tmp_path: Path
) -> AsyncIterator[Provisioner]:
    home = tmp_path / "home"
    settings = Settings(home=home)
    async with (
        running_worker(temporal_client, sqlite_database, redis, home, settings=settings) as queue,
        running_bridge(redis, temporal_client, queue),
    ):
        # The worker's vault: the key the API encrypted with is the one the activity opens with.
        yield Provisioner(
            temporal_client, sqlite_database, redis, Vault.from_settings(settings), home
        )


def this_machines_memory_mb() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20


def key_lines(private_key: str) -> list[str]:
    """The key's base64 lines: any one of them found somewhere is a leak."""
    return [line for line in private_key.strip().splitlines() if not line.startswith("-----")]


def decoded(value: Any) -> Any:
    """A history as JSON with every payload's data decoded (payloads are base64 on the wire)."""
    if isinstance(value, dict):
        if isinstance(value.get("data"), str) and isinstance(value.get("metadata"), dict):
            return {**value, "data": base64.b64decode(value["data"]).decode(errors="replace")}
        return {key: decoded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decoded(item) for item in value]
    return value


async def histories(client: Client, workflow_id: str) -> list[dict[str, Any]]:
    """Every run of ``workflow_id``, oldest first, as decoded JSON."""
    runs = sorted(await runs_of(client, workflow_id), key=lambda run: run.start_time)
    found = []
    for run in runs:
        history = await client.get_workflow_handle(workflow_id, run_id=run.run_id).fetch_history()
        found.append(decoded(history.to_json_dict()))
    return found


def scheduled_activities(history: dict[str, Any]) -> list[str]:
    scheduled = EventType.Name(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    return [
        event["activityTaskScheduledEventAttributes"]["activityType"]["name"]
        for event in history["events"]
        if event["eventType"] == scheduled
    ]


async def test_an_added_server_becomes_ready_with_this_machines_capacity(
    provisioner: Provisioner, sshd: SshHost
) -> None:
    message = await provisioner.add(sshd)
    await provisioner.send()

    output = await provisioner.outcome(message)
    assert output.status == ServerStatus.ready and output.error is None, output
    server = await provisioner.server(message.server_handle)
    assert server.status == ServerStatus.ready and server.last_error is None
    assert server.capacity == output.capacity
    capacity = server.capacity or {}
    assert capacity["cpus"] == os.cpu_count()
    total = this_machines_memory_mb()
    assert abs(capacity["memory_mb"] - total) <= max(64, total // 50)
    assert capacity["disk_free_gb"] > 0
    assert server.last_checked_at is not None
    # The host key met on first contact is kept, to be checked on every later connection.
    host_key = sshd.known_hosts.split(maxsplit=1)[1]
    assert server.known_hosts is not None and host_key in server.known_hosts

    key = provisioner_result_key(message.request_id)
    result = ProvisionerResult.model_validate_json(await provisioner.redis.get(key))
    assert result == ProvisionerResult(
        request_id=message.request_id,
        server_handle=message.server_handle,
        success=True,
        status="READY",
    )
    assert 0 < await provisioner.redis.ttl(key) <= PROVISIONER_RESULT_TTL_SECONDS
    # The run's private directory, which held the decrypted key, is gone.
    assert list((provisioner.home / "ansible" / "runs").iterdir()) == []


async def test_an_unreachable_server_fails_with_a_readable_error(
    provisioner: Provisioner, sshd: SshHost
) -> None:
    closed = free_port()  # nothing listens there
    message = await provisioner.add(sshd, port=closed)
    await provisioner.send()

    output = await provisioner.outcome(message)
    # A server that cannot be reached is an outcome to report, not a failed workflow.
    assert output.status == ServerStatus.failed and output.capacity is None
    server = await provisioner.server(message.server_handle)
    assert server.status == ServerStatus.failed and server.capacity is None
    error = server.last_error or ""
    assert "Failed to connect to the host via ssh" in error, error
    assert f"port {closed}: Connection refused" in error, error
    assert server.known_hosts is None
    result = await provisioner.result(message)
    assert not result.success and result.status == "FAILED" and result.error == error


async def test_the_same_message_delivered_again_runs_the_playbook_once(
    provisioner: Provisioner, sshd: SshHost
) -> None:
    # Delivered twice at once (a relay that died between its XADD and marking it sent), then
    # once more after the run closed (a bridge that died before acknowledging, much later).
    message = await provisioner.add(sshd)
    await publish(provisioner.redis, PROVISIONER_QUEUE, message.to_fields())
    await publish(provisioner.redis, PROVISIONER_QUEUE, message.to_fields())
    first = await provisioner.outcome(message)
    assert first.status == ServerStatus.ready
    workflow_id = provision_workflow_id(message.server_handle)
    before = len(await eventually(lambda: runs_of(provisioner.client, workflow_id), "the run"))
    checked_at = (await provisioner.server(message.server_handle)).last_checked_at

    await publish(provisioner.redis, PROVISIONER_QUEUE, message.to_fields())

    async def another_closed_run() -> list[Any]:
        runs = await runs_of(provisioner.client, workflow_id)
        closed = all(run.status == WorkflowExecutionStatus.COMPLETED for run in runs)
        return runs if len(runs) == before + 1 and closed else []

    await eventually(another_closed_run, "a run for the late delivery", within=WITHIN)
    await eventually(lambda: acked(provisioner.redis, PROVISIONER_QUEUE), "the acks")
    runs = await histories(provisioner.client, workflow_id)
    playbook_runs = [
        name for h in runs for name in scheduled_activities(h) if name == "provision_server"
    ]
    assert len(playbook_runs) == 1
    # The late run only looked the request's result up, and returned it.
    assert scheduled_activities(runs[-1]) == ["find_provision_result"]
    latest = await provisioner.client.get_workflow_handle(
        workflow_id, result_type=ProvisionOutput
    ).result()
    assert latest == ProvisionOutput(server_handle=message.server_handle, status="READY")
    assert (await provisioner.server(message.server_handle)).last_checked_at == checked_at


async def test_a_later_provisioning_checks_the_host_key_learned_first(
    provisioner: Provisioner, sshd: SshHost
) -> None:
    message = await provisioner.add(sshd)
    await provisioner.send()
    assert (await provisioner.outcome(message)).status == ServerStatus.ready
    learned = (await provisioner.server(message.server_handle)).known_hosts

    again = await provisioner.outcome(await provisioner.again(message.server_handle))
    assert again.status == ServerStatus.ready
    assert (await provisioner.server(message.server_handle)).known_hosts == learned

    # The host now shows another key (another machine, or someone in between): refused.
    async with provisioner.db.session() as session:
        server = await servers.get_server(session, message.server_handle)
        server.known_hosts = f"[{sshd.host}]:{sshd.port} ssh-ed25519 {'A' * 68}"
        session.add(server)
        await session.commit()
    refused = await provisioner.outcome(await provisioner.again(message.server_handle))
    assert refused.status == ServerStatus.failed
    assert "Host key verification failed" in (refused.error or ""), refused.error
    stored = await provisioner.server(message.server_handle)
    assert stored.status == ServerStatus.failed and stored.last_error == refused.error
    assert stored.known_hosts and "A" * 68 in stored.known_hosts  # not replaced by what it saw


async def test_a_message_for_a_server_that_does_not_exist_fails_and_says_so(
    provisioner: Provisioner,
) -> None:
    message = ProvisionerMessage(server_handle=f"gone-{uuid.uuid4().hex[:8]}")
    await publish(provisioner.redis, PROVISIONER_QUEUE, message.to_fields())

    result = await provisioner.result(message)
    assert not result.success and result.status == "FAILED"
    assert result.error == f"server {message.server_handle} does not exist"
    handle = provisioner.client.get_workflow_handle(provision_workflow_id(message.server_handle))
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    assert f"server {message.server_handle} does not exist" in str(failed.value.cause)


async def test_the_private_key_is_in_no_history_result_log_or_stream(
    provisioner: Provisioner, sshd: SshHost, tmp_path: Path
) -> None:
    with logs_to(tmp_path / "logs") as log_file:
        message = await provisioner.add(sshd)
        await provisioner.send()
        assert (await provisioner.outcome(message)).status == ServerStatus.ready
        again = await provisioner.again(message.server_handle)
        assert (await provisioner.outcome(again)).status == ServerStatus.ready

    runs = await histories(provisioner.client, provision_workflow_id(message.server_handle))
    places = {f"run {n}": json.dumps(history) for n, history in enumerate(runs)}
    # The scan looks where the key would be: the activities' inputs and results are in there.
    assert all(
        message.server_handle in text and "provision_server" in text for text in places.values()
    )
    results = [
        await provisioner.redis.get(provisioner_result_key(m.request_id)) for m in (message, again)
    ]
    assert all(results)
    places["results"] = b"\n".join(results).decode()
    places["worker log"] = log_file.read_text()
    assert (
        "server provisioned" in places["worker log"] and "playbook finished" in places["worker log"]
    )
    places["streams and outbox"] = await everything_in(provisioner.db, provisioner.redis)
    assert message.request_id in places["streams and outbox"]

    lines = key_lines(sshd.private_key)
    assert lines
    for place, text in places.items():
        assert not any(line in text for line in lines), f"the private key is in {place}"
