"""The egress proxy on a real Unix socket: refusals, tunnels, plain HTTP, its log lines.

Clients are raw sockets (to send what a client might, malformed too) and real HTTP clients
(httpx, urllib) through the forwarder process, as a Worker reaches it; the hosts behind it are
real servers on loopback.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from db.engine import Database
from gateway import EGRESS_SOCKET_NAME, Gateway, GatewaySettings, socket_path_for
from gateway.egress import MAX_HEAD_BYTES, Allowlist, EgressProxy
from gateway.server import _bind
from testing.logs import log_lines, logs_to
from testing.standins.server import serve
from testing.waiting import eventually
from tests.gateway.conftest import Forwarders, ask

TASK = "task-egress-1"


def connect(authority: str) -> bytes:
    return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    with logs_to(tmp_path / "logs") as path:
        yield path


def lines_for(log_file: Path, event: str) -> list[dict[str, Any]]:
    return [line for line in log_lines(log_file) if line["event"] == event]


class Proxies:
    """Serves ``EgressProxy`` for a task on a socket with the allowlist a test gives."""

    def __init__(self, socket_dir: Path) -> None:
        self.socket_dir = socket_dir
        self.running: list[EgressProxy] = []

    async def start(self, *allowed: str, connect_timeout: float = 5.0) -> Path:
        path = self.socket_dir / f"{len(self.running)}-{EGRESS_SOCKET_NAME}"
        proxy = EgressProxy(TASK, Allowlist(allowed), connect_timeout)
        await proxy.start(_bind(path))
        self.running.append(proxy)
        return path


@pytest_asyncio.fixture
async def proxies(socket_dir: Path) -> AsyncIterator[Proxies]:
    made = Proxies(socket_dir)
    try:
        yield made
    finally:
        for proxy in made.running:
            await proxy.stop()


@pytest_asyncio.fixture
async def echo_port() -> AsyncIterator[int]:
    """A TCP echo server on loopback (what a tunnel reaches)."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def echo(request: Request) -> JSONResponse:
    """What the host received, as JSON (a stand-in for any plain-HTTP server)."""
    return JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": dict(request.headers),
            "body": (await request.body()).decode(),
        },
        headers={"x-upstream": "yes"},
    )


@pytest.fixture(scope="module")
def http_host() -> Iterator[str]:
    app = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])
    with serve(app) as url:
        yield url


# --- refused -------------------------------------------------------------------------------------


async def test_a_host_outside_the_allowlist_gets_403_and_a_log_line(
    proxies: Proxies, log_file: Path
) -> None:
    path = await proxies.start("files.example.com")
    status, reason, body = await ask(path, b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 403
    assert "pypi.org is not in the egress allowlist" in reason
    text = body.decode()
    assert "egress to pypi.org refused" in text and "ORCHESTRATOR_EGRESS_ALLOWLIST" in text

    status, _, body = await ask(path, b"GET http://Example.COM/x HTTP/1.1\r\nHost: e\r\n\r\n")
    assert status == 403 and b"egress to example.com refused" in body

    refused = lines_for(log_file, "egress refused")
    assert [(r["task_id"], r["host"], r["port"], r["outcome"]) for r in refused] == [
        (TASK, "pypi.org", 443, "refused"),
        (TASK, "example.com", 80, "refused"),
    ]
    assert [r["method"] for r in refused] == ["CONNECT", "GET"]
    assert lines_for(log_file, "egress allowed") == []


async def test_only_pypi_is_allowed_by_default(proxies: Proxies, echo_port: int) -> None:
    """The hosts a uv lockfile names, for uv's project commands; nothing else."""
    default = GatewaySettings().egress_allowlist
    assert default == ["pypi.org", "files.pythonhosted.org"]
    path = await proxies.start(*default)
    status, _, _ = await ask(path, connect(f"127.0.0.1:{echo_port}"))
    assert status == 403
    status, reason, _ = await ask(path, b"CONNECT github.com:443 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 403 and "github.com is not in the egress allowlist" in reason


async def test_urllib_shows_the_refusal_through_the_forwarder(
    proxies: Proxies, forwarder: Forwarders
) -> None:
    """What pip and other urllib-like clients print: the status line of the refused tunnel."""
    url = forwarder(await proxies.start())
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"https": url}))
    with pytest.raises(urllib.error.URLError) as refused:
        await asyncio.to_thread(opener.open, "https://pypi.org/simple/", timeout=10)
    assert "Tunnel connection failed: 403 pypi.org is not in the egress allowlist" in str(
        refused.value
    )
    assert "ORCHESTRATOR_EGRESS_ALLOWLIST" in str(refused.value)


# --- allowed -------------------------------------------------------------------------------------


async def test_connect_tunnels_both_ways_to_an_allowed_host(
    proxies: Proxies, echo_port: int, log_file: Path
) -> None:
    path = await proxies.start("127.0.0.1")
    reader, writer = await asyncio.open_unix_connection(path)
    # Bytes sent right behind the CONNECT (as a TLS client hello is) reach the host too.
    writer.write(connect(f"127.0.0.1:{echo_port}") + b"early ")
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        writer.write(b"and late")
        assert await reader.readexactly(len(b"early and late")) == b"early and late"
        writer.write_eof()  # a half-close travels on: the echo server ends, and so does the tunnel
        assert await reader.read() == b""
    writer.close()

    (allowed,) = lines_for(log_file, "egress allowed")
    assert (allowed["task_id"], allowed["host"], allowed["port"]) == (TASK, "127.0.0.1", echo_port)
    assert allowed["outcome"] == "allowed"
    done = await wait_for_line(log_file, "egress done")
    assert done["bytes_sent"] == done["bytes_received"] == len(b"early and late")


async def wait_for_line(log_file: Path, event: str) -> dict[str, Any]:
    """The proxy writes its last line as it closes the connection, after the client saw EOF."""
    found = await eventually(lambda: lines_for(log_file, event), event, within=10)
    return found[0]


async def test_plain_http_is_forwarded_to_an_allowed_host(
    proxies: Proxies, forwarder: Forwarders, http_host: str
) -> None:
    url = forwarder(await proxies.start("127.0.0.1"))
    async with httpx.AsyncClient(proxy=url, timeout=10) as client:
        answer = await client.get(
            f"{http_host}/some/path?q=1",
            headers={"Proxy-Authorization": "Basic c2VjcmV0", "X-Kept": "yes"},
        )
        assert answer.status_code == 200 and answer.headers["x-upstream"] == "yes"
        seen = answer.json()
        assert (seen["method"], seen["path"], seen["query"]) == ("GET", "/some/path", "q=1")
        assert seen["headers"]["host"] == http_host.removeprefix("http://")
        assert seen["headers"]["x-kept"] == "yes"
        assert "proxy-authorization" not in seen["headers"]  # for the proxy, not the host

        async def chunks() -> AsyncIterator[bytes]:
            for part in (b"a streamed ", b"body"):
                yield part

        posted = await client.post(f"{http_host}/upload", content=chunks())
        assert posted.json()["body"] == "a streamed body"
        assert posted.json()["method"] == "POST"


async def test_an_allowed_host_that_does_not_answer_gets_502(
    proxies: Proxies, log_file: Path
) -> None:
    path = await proxies.start("127.0.0.1")
    closed = _closed_port()
    status, _, body = await ask(path, connect(f"127.0.0.1:{closed}"))
    assert status == 502 and f"egress to 127.0.0.1:{closed} allowed".encode() in body
    (failed,) = lines_for(log_file, "egress failed")
    assert (failed["task_id"], failed["outcome"]) == (TASK, "unreachable")


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once it is closed


# --- malformed -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status", "says"),
    [
        (b"garbage\r\n\r\n", 400, "malformed request"),
        (b"GET /path HTTP/1.1\r\nHost: x\r\n\r\n", 400, "ask for an absolute URL"),
        (b"GET https://pypi.org/ HTTP/1.1\r\nHost: x\r\n\r\n", 400, "goes through CONNECT"),
        (b"CONNECT pypi.org HTTP/1.0\r\n\r\n", 400, "expected host:port"),
        (b"CONNECT pypi.org:99999 HTTP/1.0\r\n\r\n", 400, "expected host:port"),
        (b"CONNECT bad_host!:443 HTTP/1.0\r\n\r\n", 400, "is not a host name"),
        (b"GET http://h:x/ HTTP/1.1\r\nHost: h\r\n\r\n", 400, "the port is not a number"),
        (b"GET http://h:0/ HTTP/1.1\r\nHost: h\r\n\r\n", 400, "the port is not a number"),
        # Past the limit, and more than it reads at once: refused before the head is complete.
        (b"GET http://h/ HTTP/1.1\r\nX: " + b"a" * 2 * MAX_HEAD_BYTES + b"\r\n\r\n", 431, "bytes"),
    ],
)
async def test_a_malformed_request_gets_a_clear_4xx(
    proxies: Proxies, log_file: Path, request_bytes: bytes, status: int, says: str
) -> None:
    path = await proxies.start("pypi.org", "h")
    answered, _, body = await ask(path, request_bytes)
    assert answered == status and says in body.decode()
    (logged,) = lines_for(log_file, "egress bad request")
    assert (logged["task_id"], logged["status"], logged["outcome"]) == (TASK, status, "bad request")


# --- the allowlist -------------------------------------------------------------------------------


def test_wildcards_match_names_under_the_domain_only() -> None:
    allowlist = Allowlist(["*.Example.com", "PyPI.org.", "10.0.0.1", "::1"])
    for host in ("files.example.com", "a.b.example.com", "pypi.org", "PYPI.ORG.", "[::1]"):
        assert allowlist.allows(host), host
    assert allowlist.allows("10.0.0.1")
    for host in (
        "example.com",  # the wildcard is for names under it
        "badexample.com",
        "example.com.evil.org",
        "pypi.org.evil.org",
        "files.pypi.org",
        "10.0.0.2",
        "not a host",
        "",
    ):
        assert not allowlist.allows(host), host
    assert not Allowlist().allows("pypi.org")


def test_the_setting_is_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_EGRESS_ALLOWLIST", " PyPI.org, *.pythonhosted.org,,10.1.2.3 ")
    assert GatewaySettings().egress_allowlist == ["pypi.org", "*.pythonhosted.org", "10.1.2.3"]
    monkeypatch.setenv("ORCHESTRATOR_EGRESS_ALLOWLIST", "")
    assert GatewaySettings().egress_allowlist == []


@pytest.mark.parametrize("entry", ["https://pypi.org", "pypi.org:443", "*", "*.10.0.0.1", "a/b"])
def test_a_bad_allowlist_entry_is_named(monkeypatch: pytest.MonkeyPatch, entry: str) -> None:
    monkeypatch.setenv("ORCHESTRATOR_EGRESS_ALLOWLIST", f"pypi.org,{entry}")
    with pytest.raises(ValidationError) as bad:
        GatewaySettings()
    assert f"ORCHESTRATOR_EGRESS_ALLOWLIST: {entry!r} is not a host name" in str(bad.value)


# --- with the gateway ----------------------------------------------------------------------------


async def test_the_gateway_serves_the_proxy_beside_its_socket(
    sqlite_database: Database, socket_dir: Path, echo_port: int
) -> None:
    settings = GatewaySettings(egress_allowlist=["127.0.0.1"])
    async with Gateway(sqlite_database, settings) as gateway:
        socket = socket_path_for(socket_dir, TASK)
        egress = socket.with_name(EGRESS_SOCKET_NAME)
        await gateway.open(TASK, socket)
        status, _, _ = await ask(egress, connect("example.com:443"))
        assert status == 403
        inode = egress.stat().st_ino
        await gateway.open(TASK, socket)  # idempotent: the same socket keeps serving
        assert egress.stat().st_ino == inode

        # Its file gone (a host cleaning up under a running process): the next open binds again.
        egress.unlink()
        assert not gateway.is_open(TASK)
        await gateway.open(TASK, socket)
        assert gateway.is_open(TASK)
        status, _, _ = await ask(egress, connect("example.com:443"))
        assert status == 403

        # Closing the task's gateway ends its open tunnels too.
        reader, writer = await asyncio.open_unix_connection(egress)
        writer.write(connect(f"127.0.0.1:{echo_port}"))
        async with asyncio.timeout(10):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
            await gateway.close(TASK)
            assert await reader.read() == b""
        writer.close()
        assert not egress.exists() and not socket.exists()
        await gateway.close(TASK)  # twice is fine
