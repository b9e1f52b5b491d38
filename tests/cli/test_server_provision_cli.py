"""``orchestrator server add/provision --wait`` on the stack's own processes: the API, ``python
-m stack.temporal_worker`` and ``python -m bridges`` (real Temporal, Redis, SQLite), provisioning
this very machine through a real sshd on loopback."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from testing import servers
from testing.servers import free_port
from testing.ssh_host import SshHost
from tests.cli.conftest import Cli


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    # This module's own Redis (the API fixture takes it from here): its bridge takes every
    # queue's messages, and the suite's shared Redis holds other tests' ones.
    with servers.redis_server() as url:
        yield url


def add(cli: Cli, sshd: SshHost, handle: str, *extra: str, port: int | None = None) -> list[str]:
    return [
        "server", "add", "--handle", handle, "--host", sshd.host, "--port", str(port or sshd.port),
        "--user", sshd.user, "--key-file", str(sshd.key_file), *extra,
    ]  # fmt: skip


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_add_and_provision_wait_until_ready(cli: Cli, sshd: SshHost, stack: None) -> None:
    handle = unique("web")
    server = cli.json(*add(cli, sshd, handle, "--wait"))
    assert server["handle"] == handle and server["status"] == "READY", server
    assert server["capacity"]["cpus"] == os.cpu_count() and server["last_error"] is None
    assert len(server["request_id"]) == 32 and server["last_checked_at"]

    human = cli("server", "provision", handle, "--wait")
    assert human.exit_code == 0, human.output
    assert f"Server {handle} READY: {os.cpu_count()} CPU" in human.stdout
    # It waited for this request's own run, not the one before it.
    again = cli.json("server", "show", handle)
    assert again["status"] == "READY" and again["last_checked_at"] > server["last_checked_at"]


def test_wait_on_an_unreachable_server_exits_1_with_the_reason(
    cli: Cli, sshd: SshHost, stack: None
) -> None:
    handle, closed = unique("away"), free_port()
    server = cli.json(*add(cli, sshd, handle, "--wait", port=closed), expect=1)
    assert server["status"] == "FAILED" and server["capacity"] is None
    assert f"port {closed}: Connection refused" in server["last_error"]

    human = cli("server", "provision", handle, "--wait")
    assert human.exit_code == 1, human.output
    assert f"Server {handle} FAILED" in human.stdout and "Connection refused" in human.stdout


def test_wait_gives_up_at_its_timeout_and_provisioning_goes_on(
    cli: Cli, sshd: SshHost, stack: None
) -> None:
    handle = unique("slow")
    cli.json(*add(cli, sshd, handle))
    error = cli.json("server", "provision", handle, "--wait", "--timeout", "0", expect=1)["error"]
    assert error["timed_out"] is True and error["server"] == handle
    assert "timed out after 0s" in error["message"]

    def settled() -> dict[str, Any] | None:
        found: dict[str, Any] = cli.json("server", "show", handle)
        return found if found["status"] == "READY" else None

    deadline = time.monotonic() + 120
    while (server := settled()) is None:
        assert time.monotonic() < deadline, "the server never became READY"
        time.sleep(0.2)
    assert server["capacity"]["cpus"] == os.cpu_count()
