"""A stand-in upstream on a loopback port, the gateway on Unix sockets, the forwarder process."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import uvicorn

from core.paths import DEPLOY_DIR
from db.engine import Database
from gateway import Gateway, GatewaySettings, ModelPrice, PriceTable
from testing.servers import free_port, stop_process, wait_for_port
from testing.standins.model_upstream import ANTHROPIC_MODEL, OPENAI_MODEL, Upstream

FORWARDER = DEPLOY_DIR / "images" / "base" / "files"
FORWARDER = FORWARDER / "forwarder.py"
ANTHROPIC_KEY = "sk-ant-gateway-secret"
OPENAI_KEY = "sk-openai-gateway-secret"
PRICES = {
    ANTHROPIC_MODEL: ModelPrice(input=3, output=15, cache_read=0.3, cache_write=3.75),
    OPENAI_MODEL: ModelPrice(input=1.25, output=10, cache_read=0.125),
}


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # pytest keeps its own signal handlers


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    stand_in = Upstream()
    port = free_port()
    server = _Server(
        uvicorn.Config(stand_in.app(), host="127.0.0.1", port=port, lifespan="off", log_config=None)
    )
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            if task.done():
                task.result()  # raises why it did not start
            await asyncio.sleep(0.01)
    try:
        yield stand_in, f"http://127.0.0.1:{port}"
    finally:
        if stand_in.hold is not None:
            stand_in.hold.set()
        server.should_exit = True
        await task


def make_gateway(db: Database, base_url: str) -> Gateway:
    settings = GatewaySettings(
        anthropic_base_url=base_url,
        openai_base_url=f"{base_url}/v1",  # the OpenAI-SDK way of writing it
        anthropic_api_key=ANTHROPIC_KEY,
        openai_api_key=OPENAI_KEY,
    )
    return Gateway(db, settings, prices=PriceTable(PRICES, defaults=False))


@pytest_asyncio.fixture
async def gateway(
    sqlite_database: Database, upstream: tuple[Upstream, str]
) -> AsyncIterator[Gateway]:
    async with make_gateway(sqlite_database, upstream[1]) as gw:
        yield gw


@pytest.fixture
def socket_dir(short_dir: Path) -> Path:
    return short_dir


class Forwarders:
    """Starts ``forwarder.py`` as the image runs it; ``start`` returns its base URL."""

    def __init__(self) -> None:
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, socket_path: Path) -> str:
        port = free_port()
        # -I -S: no site-packages, so it runs on a bare python3 as in the image.
        command = [sys.executable, "-I", "-S", str(FORWARDER)]
        command += ["--listen", f"127.0.0.1:{port}", "--socket", str(socket_path)]
        proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        self.processes[url] = proc
        wait_for_port(port, timeout=10, proc=proc)
        return url

    __call__ = start

    def stop_all(self) -> None:
        for proc in self.processes.values():
            stop_process(proc)


@pytest.fixture
def forwarder() -> Iterator[Forwarders]:
    forwarders = Forwarders()
    try:
        yield forwarders
    finally:
        forwarders.stop_all()


def uds_client(socket_path: Path) -> httpx.AsyncClient:
    """A client straight on a task's socket (no forwarder)."""
    transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30)


async def ask(socket_path: Path, data: bytes) -> tuple[int, str, bytes]:
    """Send ``data`` raw to a socket (an egress proxy's); the answer's status, reason phrase and
    body, read until the proxy closes the connection."""
    reader, writer = await asyncio.open_unix_connection(socket_path)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    _, status, reason = head.split(b"\r\n")[0].decode().split(" ", 2)
    return int(status), reason, body
