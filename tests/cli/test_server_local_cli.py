"""``orchestrator server local`` on the stack's own processes (the API, the Temporal worker
``python -m stack.temporal_worker`` and ``python -m bridges`` on real Temporal, Redis and SQLite):
this machine becomes the deploy target ``local``, an sshd of the stack's own that the worker
provisions over real SSH."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import Settings
from stack import local_target
from testing import servers
from testing.servers import free_port
from tests.cli.conftest import Api, Cli


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    # This module's own Redis (the API fixture takes it from here): its bridge takes every
    # queue's messages, and the suite's shared Redis holds other tests' ones.
    with servers.redis_server() as url:
        yield url


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def pid_file(home: Path) -> Path:
    return home / "target" / "sshd.pid"


def test_server_local_registers_this_machine_once(cli: Cli, api: Api, stack: None) -> None:
    port = free_port()
    try:
        server = cli.json("server", "local", ORCHESTRATOR_LOCAL_TARGET_PORT=str(port))
        assert server["handle"] == "local" and server["status"] == "READY", server
        assert (server["host"], server["port"]) == ("127.0.0.1", port)
        assert server["apps_root"] == str(api.home / "target" / "apps")
        assert server["capacity"]["cpus"] == os.cpu_count() and server["last_error"] is None
        # Its apps go live at <project>.localhost on its edge, with the edge's own CA.
        assert server["base_domain"] == "localhost" and server["edge"]["tls"] == "internal"
        assert server["edge"]["bind"] == "127.0.0.1"
        pid = int(pid_file(api.home).read_text())
        assert listening(port)
        assert b"sshd" in Path(f"/proc/{pid}/cmdline").read_bytes()

        again = cli.json("server", "local", ORCHESTRATOR_LOCAL_TARGET_PORT=str(port))
        assert again["id"] == server["id"] and again["status"] == "READY"
        assert int(pid_file(api.home).read_text()) == pid
        assert [s["handle"] for s in cli.json("server", "list")].count("local") == 1
    finally:
        stopped = local_target.stop(Settings(home=api.home))
    assert stopped and not listening(port) and not pid_file(api.home).exists()
