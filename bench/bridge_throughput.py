"""How fast the bridges turn queue messages into workflow starts, compared with the raw client.

    python bench/bridge_throughput.py [--quick]

Starts its own Temporal dev server (SQLite file, WAL pragmas) and Redis, then measures in one run:

(a) raw:        N ``start_workflow`` calls (the bridge's own start call), 50 in flight;
(b) bridge:     N engineering messages XADDed, then the Bridge in-process until all are acked;
    redelivery: the same N messages again (already started -> ack);
    (a) and (b) alternate for a few rounds; the ratios are medians of each round's ratio;
(c) latency:    ``POST /tasks`` on the real API -> the workflow seen RUNNING through describe(),
                for M tasks one after the other, with ``python -m api`` and ``python -m bridges``.

The dev server's CPU is the bottleneck, so the figures that travel are the ratios to (a).
Prints one line per figure, then one JSON line with all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make the project (and tests.servers) importable

import httpx  # noqa: E402
from redis.asyncio import Redis  # noqa: E402
from temporalio.client import Client, WorkflowExecutionStatus  # noqa: E402
from temporalio.service import RPCError  # noqa: E402

from bench.common import report_and_exit  # noqa: E402
from bridges.consumer import Bridge  # noqa: E402
from bridges.routes import routes, start_engineering  # noqa: E402
from core.contracts.engineering import ENGINEERING_QUEUE, EngineeringMessage  # noqa: E402
from core.logging import configure_logging  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.temporal import connect_when_up, ensure_search_attributes  # noqa: E402
from testing.servers import (  # noqa: E402
    TEMPORAL_BIN,
    TEMPORAL_SQLITE_PRAGMAS,
    free_port,
    redis_server,
    stop_process,
    wait_for_port,
)

IN_FLIGHT = 50
POLL_S = 0.003  # describe() poll interval for the latency figure


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@contextlib.contextmanager
def temporal_server(workdir: Path) -> Iterator[str]:
    port = free_port()
    log = (workdir / "temporal.log").open("wb")
    proc = subprocess.Popen(
        [
            str(TEMPORAL_BIN),
            "server",
            "start-dev",
            "--db-filename",
            str(workdir / "temporal.sqlite"),
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--http-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
            "--headless",
            "--log-level",
            "error",
            *TEMPORAL_SQLITE_PRAGMAS,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc=proc)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc)
        log.close()


def message() -> EngineeringMessage:
    return EngineeringMessage(
        task_id=uuid.uuid4().hex, project_id="bench-project", user_id="bench-user"
    )


async def until(check: Any, what: str, within: float = 60.0, interval: float = 0.005) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(interval)
    raise TimeoutError(f"{what} did not happen within {within}s")


async def search_attributes_usable(client: Client, task_queue: str) -> None:
    """Newly registered search attributes take a moment to be accepted by every service."""

    async def attempt() -> bool:
        try:
            await start_engineering(client, message(), task_queue=task_queue)
        except RPCError:
            return False
        return True

    await until(attempt, "search attributes to be usable", within=30, interval=0.1)


# -- (a) raw ---------------------------------------------------------------------------------


async def bench_raw(client: Client, n: int, task_queue: str) -> float:
    messages = [message() for _ in range(n)]
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(msg: EngineeringMessage) -> None:
        async with gate:
            await start_engineering(client, msg, task_queue=task_queue)

    started = time.perf_counter()
    await asyncio.gather(*(one(m) for m in messages))
    return n / (time.perf_counter() - started)


# -- (b) the bridge --------------------------------------------------------------------------


async def all_acked(redis: Redis) -> bool:
    groups = await redis.xinfo_groups(ENGINEERING_QUEUE)
    return bool(groups) and groups[0]["pending"] == 0 and groups[0]["lag"] == 0


async def drain_with_bridge(redis: Redis, bridge: Bridge, n: int) -> float:
    stop = asyncio.Event()
    started = time.perf_counter()
    running = asyncio.create_task(bridge.run(stop))
    try:
        await until(lambda: all_acked(redis), f"{n} messages acked", within=120)
        return n / (time.perf_counter() - started)
    finally:
        stop.set()
        await running


async def xadd_all(redis: Redis, fields: list[dict[str, str]]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for entry in fields:
            pipe.xadd(ENGINEERING_QUEUE, entry)  # type: ignore[arg-type]
        await pipe.execute()


async def bench_bridge(client: Client, redis: Redis, n: int, task_queue: str) -> dict[str, float]:
    """Starts/s of fresh messages, then msgs/s of the same messages delivered again."""

    def new_bridge() -> Bridge:
        return Bridge(
            redis,
            client,
            routes(Settings(temporal_task_queue=task_queue)),
            group="bench",
            consumer="bench",
            batch=IN_FLIGHT,
            block_ms=100,
        )

    fields = [message().to_fields() for _ in range(n)]
    await xadd_all(redis, fields)
    first = await drain_with_bridge(redis, new_bridge(), n)
    await xadd_all(redis, fields)  # every start is now "already started" -> ack
    again = await drain_with_bridge(redis, new_bridge(), n)
    return {"bridge": first, "redelivery": again}


async def bench_throughput(
    client: Client, redis_url: str, n: int, rounds: int, task_queue: str
) -> dict[str, float]:
    """Alternate raw and bridge rounds, so both see the same server load and database size;
    the ratios are medians of each round's ratio."""
    redis = Redis.from_url(redis_url)
    raw: list[float] = []
    bridge: list[float] = []
    again: list[float] = []
    try:
        for number in range(1, rounds + 1):
            raw.append(await bench_raw(client, n, task_queue))
            bridged = await bench_bridge(client, redis, n, task_queue)
            bridge.append(bridged["bridge"])
            again.append(bridged["redelivery"])
            print(
                f"  round {number}: raw {raw[-1]:.1f} starts/s, bridge {bridge[-1]:.1f} starts/s, "
                f"redelivery {again[-1]:.1f} msgs/s",
                flush=True,
            )
    finally:
        await redis.aclose()
    return {
        "raw": statistics.median(raw),
        "bridge": statistics.median(bridge),
        "redelivery": statistics.median(again),
        "ratio_bridge": statistics.median(b / r for b, r in zip(bridge, raw, strict=True)),
        "ratio_redelivery": statistics.median(a / r for a, r in zip(again, raw, strict=True)),
    }


# -- (c) API -> RUNNING ----------------------------------------------------------------------


def api_available() -> bool:
    return importlib.util.find_spec("api.__main__") is not None


@contextlib.asynccontextmanager
async def api_and_bridge(
    workdir: Path, redis_url: str, temporal_address: str, task_queue: str
) -> AsyncIterator[tuple[str, str]]:
    """``python -m api`` and ``python -m bridges`` on a migrated SQLite database."""
    from db.engine import Database
    from db.migrate import upgrade_async
    from db.users import ensure_admin_key

    home = workdir / "home"
    port = free_port()
    env = {
        **os.environ,
        "ORCHESTRATOR_HOME": str(home),
        "ORCHESTRATOR_HOST": "127.0.0.1",
        "ORCHESTRATOR_API_PORT": str(port),
        "REDIS_URL": redis_url,
        "TEMPORAL_ADDRESS": temporal_address,
        "ORCHESTRATOR_TEMPORAL_TASK_QUEUE": task_queue,
    }
    env.pop("ORCHESTRATOR_CRASH_AT", None)
    settings = Settings(home=home)
    db_url = settings.effective_database_url
    home.mkdir(parents=True, exist_ok=True)
    await upgrade_async(db_url)
    db = Database(db_url)
    try:
        key = await ensure_admin_key(db, settings.api_key_file)
    finally:
        await db.dispose()

    url = f"http://127.0.0.1:{port}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        api = spawn("api", env, workdir)
        processes.append(api)
        bridges = spawn("bridges", env, workdir)
        processes.append(bridges)
        ready = home / "run" / "bridges.ready"

        async def both_ready() -> bool:
            for name, proc in (("api", api), ("bridges", bridges)):
                if proc.poll() is not None:
                    raise RuntimeError(f"python -m {name} exited with {proc.returncode}")
            if not (ready.exists() and ready.read_text().strip() == str(bridges.pid)):
                return False
            return await _healthy(url)

        await until(both_ready, "the API and the bridges to be ready", within=60, interval=0.05)
        yield url, key
    finally:
        for proc in processes:
            stop_process(proc)


def spawn(module: str, env: dict[str, str], workdir: Path) -> subprocess.Popen[bytes]:
    with (workdir / f"{module}.out").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module], cwd=REPO, env=env, stdout=out, stderr=out
        )


async def _healthy(url: str) -> bool:
    try:
        async with httpx.AsyncClient(base_url=url) as http:
            return (await http.get("/health")).status_code == 200
    except httpx.TransportError:
        return False


async def seen_running(client: Client, workflow_id: str) -> bool:
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError:
        return False  # not started yet
    return description.status == WorkflowExecutionStatus.RUNNING


async def bench_latency(
    client: Client, workdir: Path, redis_url: str, temporal_address: str, m: int
) -> list[float]:
    task_queue = f"bench-api-{uuid.uuid4().hex[:6]}"
    async with (
        api_and_bridge(workdir, redis_url, temporal_address, task_queue) as (url, key),
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http,
    ):
        project = await http.post("/projects", json={"name": f"bench-{uuid.uuid4().hex[:8]}"})
        project.raise_for_status()
        project_id = project.json()["id"]

        async def one() -> float:
            started = time.perf_counter()
            response = await http.post(
                "/tasks", json={"type": "engineering", "project_id": project_id, "spec": "bench"}
            )
            response.raise_for_status()
            workflow_id = response.json()["workflow_id"]
            await until(lambda: seen_running(client, workflow_id), workflow_id, 30, interval=POLL_S)
            return (time.perf_counter() - started) * 1000

        for _ in range(2):  # warm-up: first requests pay for lazy imports and connections
            await one()
        return [await one() for _ in range(m)]


# -- main ------------------------------------------------------------------------------------


async def run(n: int, m: int, rounds: int) -> tuple[dict[str, Any], int]:
    figures: dict[str, Any] = {"n": n, "m": m, "rounds": rounds, "in_flight": IN_FLIGHT}
    status = 0
    with (
        tempfile.TemporaryDirectory(prefix="bench-bridge-") as tmp,
        redis_server() as redis_url,
        temporal_server(Path(tmp)) as address,
    ):
        workdir = Path(tmp)
        # The in-process bridge logs like the real one, to a file.
        configure_logging("bench", "INFO", workdir / "logs")
        # The port opens before the frontend is healthy: connect as the worker does, retrying.
        settings = Settings(temporal_address=address)
        client = await asyncio.wait_for(connect_when_up(settings, asyncio.Event()), 60)
        assert client is not None
        await ensure_search_attributes(client, "default")
        task_queue = f"bench-{uuid.uuid4().hex[:6]}"
        await search_attributes_usable(client, task_queue)

        t = await bench_throughput(client, redis_url, n, rounds, task_queue)
        print(f"raw start_workflow, {IN_FLIGHT} in flight: {t['raw']:.1f} starts/s", flush=True)
        print(f"bridge, batch {IN_FLIGHT}: {t['bridge']:.1f} starts/s", flush=True)
        print(f"ratio bridge/raw: {t['ratio_bridge']:.2f}", flush=True)
        print(
            f"redelivery (already started -> ack): {t['redelivery']:.1f} msgs/s, "
            f"ratio redelivery/raw: {t['ratio_redelivery']:.2f}",
            flush=True,
        )
        figures.update(
            raw_starts_per_s=round(t["raw"], 1),
            bridge_starts_per_s=round(t["bridge"], 1),
            ratio_bridge_raw=round(t["ratio_bridge"], 3),
            redelivery_per_s=round(t["redelivery"], 1),
            ratio_redelivery_raw=round(t["ratio_redelivery"], 3),
        )

        if not api_available():
            print("POST /tasks -> RUNNING: skipped (no `python -m api` in this tree yet)")
            figures.update(latency_p50_ms=None, latency_p99_ms=None)
            status = 2
        else:
            samples = await bench_latency(client, workdir, redis_url, address, m)
            p50, p99 = percentile(samples, 50), percentile(samples, 99)
            print(f"POST /tasks -> RUNNING: p50 {p50:.1f} ms, p99 {p99:.1f} ms (M={m})")
            figures.update(latency_p50_ms=round(p50, 1), latency_p99_ms=round(p99, 1))
    return figures, status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="N=100, M=15")
    parser.add_argument("-n", type=int, help="messages for the throughput figures (500)")
    parser.add_argument("-m", type=int, help="sequential tasks for the latency figure (50)")
    parser.add_argument("--rounds", type=int, help="alternating raw/bridge rounds (3; quick: 1)")
    args = parser.parse_args()
    n = args.n or (100 if args.quick else 500)
    m = args.m or (15 if args.quick else 50)
    rounds = args.rounds or (1 if args.quick else 3)
    report_and_exit(run(n, m, rounds))


if __name__ == "__main__":
    main()
