"""Agent -> forwarder (a process) -> the task's Unix socket -> gateway -> upstream stand-in.

Everything is real: sockets, HTTP, the forwarder as the image runs it, the database.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import httpx
import pytest
from sqlmodel import col, select

from core.contracts.agents import Budget
from core.ids import new_id
from core.paths import REPO_ROOT
from db.engine import Database
from db.tables import ModelUsage
from db.usage import load_usage
from gateway import EGRESS_SOCKET_NAME, Gateway, socket_path_for
from testing.standins.model_upstream import (
    A_CACHE_READ,
    A_CACHE_WRITE,
    A_IN,
    A_OUT,
    ANTHROPIC_MODEL,
    O_CACHED,
    O_IN,
    O_OUT,
    OPENAI_MODEL,
    Upstream,
)
from tests.gateway.conftest import (
    ANTHROPIC_KEY,
    OPENAI_KEY,
    Forwarders,
    ask,
    make_gateway,
    uds_client,
)

REPO = REPO_ROOT
CLIENT_SECRET = "client-side-credential-must-not-travel"
CONNECT_REFUSED = b"CONNECT example.com:443 HTTP/1.0\r\n\r\n"  # not allowed: a 403
A_TOKENS_IN = A_IN + A_CACHE_WRITE + A_CACHE_READ
# The stand-in's prices (conftest.PRICES), USD per million tokens.
A_COST = (A_IN * 3 + A_CACHE_WRITE * 3.75 + A_CACHE_READ * 0.3 + A_OUT * 15) / 1e6
O_COST = ((O_IN - O_CACHED) * 1.25 + O_CACHED * 0.125 + O_OUT * 10) / 1e6


def anthropic_request(stream: bool = True) -> dict:
    return {
        "model": ANTHROPIC_MODEL,
        "max_tokens": 100,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    }


def openai_request(stream: bool = True) -> dict:
    return {"model": OPENAI_MODEL, "stream": stream, "input": "hi"}


ANTHROPIC_HEADERS = {
    "x-api-key": CLIENT_SECRET,
    "authorization": f"Bearer {CLIENT_SECRET}",
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "test-beta",
}
OPENAI_HEADERS = {"authorization": f"Bearer {CLIENT_SECRET}", "x-api-key": CLIENT_SECRET}


async def rows_of(db: Database, task_id: str) -> list[ModelUsage]:
    async with db.session() as session:
        query = select(ModelUsage).where(col(ModelUsage.task_id) == task_id)
        return list(await session.exec(query.order_by(col(ModelUsage.id))))


async def first_line_with(lines, text: str) -> None:
    async with asyncio.timeout(10):
        async for line in lines:
            if text in line:
                return
    raise AssertionError(f"the stream ended before {text!r}")


async def test_an_anthropic_stream_flows_through_with_the_gateways_key(
    gateway: Gateway,
    upstream: tuple[Upstream, str],
    socket_dir: Path,
    forwarder: Forwarders,
    sqlite_database: Database,
    capfd: pytest.CaptureFixture[str],
):
    stand_in, _ = upstream
    task_id = new_id()
    sock = socket_path_for(socket_dir, task_id)
    await gateway.open(task_id, sock, Budget(max_tokens=100_000))
    base_url = forwarder(sock)
    stand_in.hold = asyncio.Event()

    async with (
        httpx.AsyncClient(base_url=base_url, timeout=30) as client,
        client.stream(
            "POST",
            "/v1/messages?beta=true",
            json=anthropic_request(),
            headers=ANTHROPIC_HEADERS,
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        received = bytearray()
        chunks = response.aiter_bytes()
        # The first text delta arrives while the stand-in still holds the rest back.
        async with asyncio.timeout(10):
            while b"Hello" not in received:
                received += await anext(chunks)
        assert stand_in.streams_finished == 0
        stand_in.hold.set()
        async for chunk in chunks:
            received += chunk
    assert bytes(received) == stand_in.anthropic_stream()

    seen = stand_in.seen[-1]
    assert seen.path == "/v1/messages"
    assert seen.query == "beta=true"
    assert seen.headers["x-api-key"] == ANTHROPIC_KEY
    assert "authorization" not in seen.headers
    assert CLIENT_SECRET not in json.dumps(seen.headers)
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.headers["anthropic-beta"] == "test-beta"

    [row] = await rows_of(sqlite_database, task_id)
    assert (row.provider, row.model, row.endpoint, row.status_code, row.refused) == (
        "anthropic",
        ANTHROPIC_MODEL,
        "/v1/messages",
        200,
        False,
    )
    assert (row.tokens_in, row.tokens_out) == (A_TOKENS_IN, A_OUT)
    assert (row.cache_read_tokens, row.cache_write_tokens) == (A_CACHE_READ, A_CACHE_WRITE)
    assert row.cost_usd == pytest.approx(A_COST)
    usage = gateway.usage(task_id)
    assert (usage.calls, usage.tokens, usage.cost_usd) == (1, A_TOKENS_IN + A_OUT, row.cost_usd)
    logged = capfd.readouterr()
    assert task_id in logged.out + logged.err  # the gateway's log lines name the task
    assert ANTHROPIC_KEY not in logged.out + logged.err
    assert CLIENT_SECRET not in logged.out + logged.err


async def test_an_openai_responses_stream_flows_through_with_a_bearer_key(
    gateway: Gateway,
    upstream: tuple[Upstream, str],
    socket_dir: Path,
    forwarder: Forwarders,
    sqlite_database: Database,
):
    stand_in, _ = upstream
    task_id = new_id()
    sock = socket_path_for(socket_dir, task_id)
    await gateway.open(task_id, sock)
    stand_in.hold = asyncio.Event()

    async with (
        httpx.AsyncClient(base_url=forwarder(sock), timeout=30) as client,
        client.stream(
            "POST", "/v1/responses", json=openai_request(), headers=OPENAI_HEADERS
        ) as response,
    ):
        assert response.status_code == 200
        lines = response.aiter_lines()
        await first_line_with(lines, "Hello")
        assert stand_in.streams_finished == 0
        stand_in.hold.set()
        rest = [line async for line in lines]
    assert any("response.completed" in line for line in rest)

    seen = stand_in.seen[-1]
    assert seen.path == "/v1/responses"  # the base URL's /v1 is not doubled
    assert seen.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert "x-api-key" not in seen.headers

    [row] = await rows_of(sqlite_database, task_id)
    assert (row.provider, row.model, row.tokens_in, row.tokens_out) == (
        "openai",
        OPENAI_MODEL,
        O_IN,
        O_OUT,
    )
    assert row.cache_read_tokens == O_CACHED
    assert row.cost_usd == pytest.approx(O_COST)


async def test_json_answers_are_counted_and_free_calls_are_not(
    gateway: Gateway, upstream: tuple[Upstream, str], socket_dir: Path, sqlite_database: Database
):
    stand_in, _ = upstream
    task_id = new_id()
    sock = socket_path_for(socket_dir, task_id)
    await gateway.open(task_id, sock)
    async with uds_client(sock) as client:
        assert (await client.head("/")).status_code == 200  # Claude Code's check, answered here
        message = await client.post("/v1/messages", json=anthropic_request(stream=False))
        assert message.json()["usage"]["output_tokens"] == A_OUT
        chat = await client.post(
            "/v1/chat/completions",
            json={"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.json()["choices"][0]["message"]["content"] == "hi"
        count = await client.post(
            "/v1/messages/count_tokens",
            json={"model": ANTHROPIC_MODEL, "messages": []},
            headers={"x-api-key": CLIENT_SECRET},
        )
        assert count.json() == {"input_tokens": 42}
    assert stand_in.seen[-1].headers["x-api-key"] == ANTHROPIC_KEY
    # HEAD / never went upstream, count_tokens did but costs nothing.
    assert [seen.path for seen in stand_in.seen] == [
        "/v1/messages",
        "/v1/chat/completions",
        "/v1/messages/count_tokens",
    ]
    rows = await rows_of(sqlite_database, task_id)
    assert [(r.endpoint, r.tokens_in, r.tokens_out) for r in rows] == [
        ("/v1/messages", A_TOKENS_IN, A_OUT),
        ("/v1/chat/completions", O_IN, O_OUT),
    ]
    assert rows[0].cost_usd == pytest.approx(A_COST)
    assert rows[1].cost_usd == pytest.approx(O_COST)


async def test_each_tasks_socket_counts_for_that_task_only(
    gateway: Gateway, socket_dir: Path, sqlite_database: Database
):
    first, second = new_id(), new_id()
    await gateway.open(first, socket_path_for(socket_dir, first))
    await gateway.open(second, socket_path_for(socket_dir, second))
    async with uds_client(socket_path_for(socket_dir, first)) as client:
        for _ in range(2):
            response = await client.post("/v1/messages", json=anthropic_request(stream=False))
            assert response.status_code == 200
    async with uds_client(socket_path_for(socket_dir, second)) as client:
        response = await client.post("/v1/responses", json=openai_request(stream=False))
        assert response.status_code == 200

    assert gateway.usage(first).calls == 2
    assert gateway.usage(first).tokens_in == 2 * A_TOKENS_IN
    assert gateway.usage(second).calls == 1
    assert gateway.usage(second).tokens_out == O_OUT
    assert await load_usage(sqlite_database, first) == gateway.usage(first)
    assert await load_usage(sqlite_database, second) == gateway.usage(second)


async def test_a_call_past_the_budget_is_refused_in_the_providers_format(
    gateway: Gateway,
    upstream: tuple[Upstream, str],
    socket_dir: Path,
    forwarder: Forwarders,
    sqlite_database: Database,
):
    stand_in, _ = upstream
    task_id = new_id()
    sock = socket_path_for(socket_dir, task_id)
    # One call uses A_TOKENS_IN + A_OUT tokens: it may start, the next may not.
    await gateway.open(task_id, sock, Budget(max_tokens=A_TOKENS_IN + A_OUT))
    async with httpx.AsyncClient(base_url=forwarder(sock), timeout=30) as client:
        first = await client.post("/v1/messages?beta=true", json=anthropic_request(stream=False))
        assert first.status_code == 200
        calls_upstream = len(stand_in.seen)

        refused = await client.post("/v1/messages?beta=true", json=anthropic_request())
        assert refused.status_code == 400
        assert refused.json() == {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": f"task budget exhausted: {A_TOKENS_IN + A_OUT} of "
                f"{A_TOKENS_IN + A_OUT} tokens used",
            },
        }
        openai = await client.post("/v1/responses", json=openai_request())
        assert openai.status_code == 400
        error = openai.json()["error"]
        assert error["code"] == "budget_exceeded"
        assert error["type"] == "invalid_request_error"
        assert error["message"].startswith("task budget exhausted")
    assert len(stand_in.seen) == calls_upstream  # neither refusal went upstream

    assert gateway.refused(task_id) == error["message"]
    stored = await load_usage(sqlite_database, task_id)
    assert (stored.calls, stored.refusals, stored.last_refusal) == (1, 2, error["message"])
    rows = await rows_of(sqlite_database, task_id)
    assert [r.refused for r in rows] == [False, True, True]


async def test_a_cost_budget_refuses_once_spent(gateway: Gateway, socket_dir: Path):
    task_id = new_id()
    sock = socket_path_for(socket_dir, task_id)
    await gateway.open(task_id, sock, Budget(max_cost_usd=O_COST * 1.5))
    async with uds_client(sock) as client:
        statuses = [
            (await client.post("/v1/responses", json=openai_request(stream=False))).status_code
            for _ in range(3)
        ]
    assert statuses == [200, 200, 400]  # under budget before each of the first two
    assert "spent" in (gateway.refused(task_id) or "")


async def test_after_the_gateway_process_is_killed_a_reopened_gateway_keeps_counting(
    sqlite_database: Database,
    sqlite_database_url: str,
    upstream: tuple[Upstream, str],
    socket_dir: Path,
    forwarder: Forwarders,
):
    """kill -9 of the process serving the gateway: the Worker's next call fails; the gateway
    opened again (as a retried activity does, in another process) carries on with the task's
    totals and budget."""
    task_id = new_id()
    sock = socket_path_for(socket_dir, task_id)
    max_tokens = 2 * (A_TOKENS_IN + A_OUT)
    command = [sys.executable, "-m", "tests.gateway.serve_one", sqlite_database_url]
    command += [upstream[1], task_id, str(sock), str(max_tokens)]
    process = await asyncio.create_subprocess_exec(
        *command, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            while (line := await process.stdout.readline()).strip() != b"ready":
                assert line, "the gateway process ended before it was ready"
        base_url = forwarder(sock)
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            assert (await client.post("/v1/messages", json=anthropic_request())).status_code == 200
    finally:
        process.kill()
        await process.wait()
    assert sock.exists()  # as a killed process leaves it: nothing listens
    egress = sock.with_name(EGRESS_SOCKET_NAME)  # and so is the task's egress proxy
    with pytest.raises(ConnectionRefusedError):
        await ask(egress, CONNECT_REFUSED)

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        with pytest.raises(httpx.TransportError):
            await client.post("/v1/messages", json=anthropic_request())

    async with make_gateway(sqlite_database, upstream[1]) as gateway:
        await gateway.open(task_id, sock, Budget(max_tokens=max_tokens))
        assert gateway.usage(task_id).tokens == A_TOKENS_IN + A_OUT
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            statuses = [
                (await client.post("/v1/messages", json=anthropic_request())).status_code
                for _ in range(2)
            ]
        assert statuses == [200, 400]
        assert (await ask(egress, CONNECT_REFUSED))[0] == 403  # served again too
        await gateway.close(task_id)
    assert not sock.exists() and not egress.exists()


async def test_many_concurrent_streams_through_one_forwarder(
    gateway: Gateway,
    upstream: tuple[Upstream, str],
    socket_dir: Path,
    forwarder: Forwarders,
    sqlite_database: Database,
):
    stand_in, _ = upstream
    task_id = new_id()
    sock = socket_path_for(socket_dir, task_id)
    await gateway.open(task_id, sock)
    base_url = forwarder(sock)
    streams = 40
    stand_in.hold = asyncio.Event()

    async def one(client: httpx.AsyncClient, index: int, started: asyncio.Event) -> bytes:
        is_openai = index % 2 == 1
        path, body = (
            ("/v1/responses", openai_request())
            if is_openai
            else ("/v1/messages", anthropic_request())
        )
        async with client.stream("POST", path, json=body) as response:
            assert response.status_code == 200
            chunks = response.aiter_bytes()
            received = await anext(chunks)
            started.set()
            async for chunk in chunks:
                received += chunk
            return received

    limits = httpx.Limits(max_connections=streams)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
        started = [asyncio.Event() for _ in range(streams)]
        calls = [asyncio.create_task(one(client, i, started[i])) for i in range(streams)]
        # Every stream is open at once before any is let finish.
        async with asyncio.timeout(20):
            await asyncio.gather(*(event.wait() for event in started))
        stand_in.hold.set()
        bodies = await asyncio.gather(*calls)
    for index, body in enumerate(bodies):
        expected = stand_in.openai_stream() if index % 2 else stand_in.anthropic_stream()
        assert body == expected

    rows = await rows_of(sqlite_database, task_id)
    assert len(rows) == streams
    usage = gateway.usage(task_id)
    assert usage.tokens_in == streams // 2 * (A_TOKENS_IN + O_IN)
    assert usage.tokens_out == streams // 2 * (A_OUT + O_OUT)


async def test_the_forwarder_stops_cleanly_on_sigterm(
    gateway: Gateway, upstream: tuple[Upstream, str], socket_dir: Path, forwarder: Forwarders
):
    """With a stream still open, SIGTERM ends the forwarder at once with status 0."""
    stand_in, _ = upstream
    task_id = new_id()
    sock = socket_path_for(socket_dir, task_id)
    await gateway.open(task_id, sock)
    base_url = forwarder(sock)
    stand_in.hold = asyncio.Event()
    proc = forwarder.processes[base_url]
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=30) as client,
        client.stream("POST", "/v1/messages", json=anthropic_request()) as response,
    ):
        lines = response.aiter_lines()
        await first_line_with(lines, "Hello")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
        with pytest.raises(httpx.TransportError):
            async for _ in lines:
                pass


async def test_the_database_ledger_on_both_databases(
    database: Database, upstream: tuple[Upstream, str], socket_dir: Path
):
    task_id = new_id()
    sock = socket_path_for(socket_dir, task_id)
    async with make_gateway(database, upstream[1]) as gateway:
        await gateway.open(task_id, sock, Budget(max_tokens=1))
        async with uds_client(sock) as client:
            ok = await client.post("/v1/messages", json=anthropic_request())
            refused = await client.post("/v1/responses", json=openai_request())
        assert (ok.status_code, refused.status_code) == (200, 400)
        stored = await load_usage(database, task_id)
        assert stored == gateway.usage(task_id)
    assert (stored.calls, stored.tokens_in, stored.tokens_out, stored.refusals) == (
        1,
        A_TOKENS_IN,
        A_OUT,
        1,
    )
    assert stored.cost_usd == pytest.approx(A_COST)


async def test_a_home_too_long_for_a_socket_address_still_serves(
    gateway: Gateway, socket_dir: Path, forwarder: Forwarders
) -> None:
    """Every Worker has a gateway socket, whatever the home's path: one longer than a socket
    address holds (108 bytes) is bound through the directory, and a Worker connects through its
    mount of that directory (here: a short link to it), as always."""
    task_id = new_id()
    long_home = socket_dir / ("h" * 60) / ("o" * 40)
    sock = socket_path_for(long_home / "run", task_id)
    assert len(str(sock)) > 108
    await gateway.open(task_id, sock)
    assert sock.is_socket() and gateway.is_open(task_id)
    mount = socket_dir / "m"
    mount.symlink_to(sock.parent)
    async with httpx.AsyncClient(base_url=forwarder(mount / sock.name), timeout=30) as client:
        assert (await client.get("/")).status_code == 200
    await gateway.close(task_id)
    assert not sock.exists()
