"""The forwarder's routes: one listener per ``--route HOST:PORT=SOCKET``, each to its own socket,
alongside the ``--listen/--socket`` form; bad arguments and a taken port fail at once."""

from __future__ import annotations

import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.servers import free_port, stop_process, wait_for_port
from tests.gateway.conftest import FORWARDER


class _Named(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        self.wfile.write(self.server.name.encode() + b":" + line)  # type: ignore[attr-defined]


class NamedServer(socketserver.ThreadingUnixStreamServer):
    """Answers each connection's first line with its own name before it."""

    daemon_threads = True

    def __init__(self, path: Path, name: str) -> None:
        super().__init__(str(path), _Named)
        self.name = name


@pytest.fixture
def sockets() -> Iterator[dict[str, Path]]:
    # A short directory: a Unix socket path has at most 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="o-"))
    servers = {name: NamedServer(directory / f"{name}.sock", name) for name in ("api", "model")}
    for server in servers.values():
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield {name: Path(server.server_address) for name, server in servers.items()}  # type: ignore[arg-type]
    finally:
        for server in servers.values():
            server.shutdown()
            server.server_close()
        shutil.rmtree(directory, ignore_errors=True)


def forwarder(*args: str) -> subprocess.Popen[bytes]:
    # -I -S: no site-packages, as on the image's bare python3.
    return subprocess.Popen(
        [sys.executable, "-I", "-S", str(FORWARDER), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def ask(port: int, text: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(text.encode() + b"\n")
        conn.shutdown(socket.SHUT_WR)
        return conn.makefile("rb").read()


def test_each_route_reaches_its_own_socket(sockets: dict[str, Path]) -> None:
    api, model, legacy = free_port(), free_port(), free_port()
    proc = forwarder(
        "--route",
        f"127.0.0.1:{api}={sockets['api']}",
        "--route",
        f"127.0.0.1:{model}={sockets['model']}",
        # The single-route form still works, next to the routes.
        "--listen",
        f"127.0.0.1:{legacy}",
        "--socket",
        str(sockets["model"]),
    )
    try:
        for port in (api, model, legacy):
            wait_for_port(port, timeout=10, proc=proc)
        assert ask(api, "hello") == b"api:hello\n"
        assert ask(model, "hi") == b"model:hi\n"
        assert ask(legacy, "hey") == b"model:hey\n"
        assert ask(api, "again") == b"api:again\n"
    finally:
        stop_process(proc)
    assert proc.returncode == 0
    assert proc.stderr is not None
    assert f"-> {sockets['api']}".encode() in proc.stderr.read()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nothing to forward"),
        (["--route", "127.0.0.1:1"], "expected HOST:PORT=SOCKET"),
        (["--route", "nohost=/x.sock"], "expected HOST:PORT"),
        (["--listen", "127.0.0.1:9"], "--listen needs --socket"),
        (
            ["--route", "127.0.0.1:9=/a.sock", "--listen", "127.0.0.1:9", "--socket", "/b.sock"],
            "two routes listen on the same HOST:PORT",
        ),
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(FORWARDER), *args], capture_output=True, timeout=30
    )
    assert done.returncode == 2
    assert message in done.stderr.decode()


def test_a_taken_port_ends_it_with_status_1(sockets: dict[str, Path]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        free = free_port()
        proc = forwarder(
            "--route",
            f"127.0.0.1:{free}={sockets['api']}",
            "--route",
            f"127.0.0.1:{port}={sockets['model']}",
        )
        try:
            assert proc.wait(30) == 1
        finally:
            stop_process(proc)
    assert proc.stderr is not None
    assert b"cannot listen" in proc.stderr.read()
