"""What one tick of the app-health Schedule costs for many deployments: its time and its events.

Starts its own Temporal dev server (SQLite file), Redis, a migrated SQLite database and the real
Temporal worker in this process; makes N projects, each with a live release (a deployment row
RUNNING) whose health URL is served by one local HTTP server that answers after LATENCY_MS (a
network round trip). Then triggers the app-health Schedule (the one `up` makes) and measures
each tick from the trigger to the run's end, and the events in its history.

Printed, from one run:

    tick        wall seconds of a tick with the default concurrency, and per app
    events      events in one tick's history (the releases go 25 per activity)
    serial      the same tick with one check at a time (health_check_concurrency=1)
    speedup     serial / tick: what checking concurrently buys, at the same latency

Usage: python bench/app_health_tick.py [--quick] [-n DEPLOYMENTS]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make the project (and testing) importable

from aiohttp import web  # noqa: E402
from redis.asyncio import Redis  # noqa: E402
from temporalio.client import Client  # noqa: E402

from bench.common import report_and_exit, temporal_on_file  # noqa: E402
from core.enums import DeploymentStatus, ServerStatus  # noqa: E402
from core.logging import configure_logging  # noqa: E402
from core.schedules import APP_HEALTH  # noqa: E402
from core.settings import Settings  # noqa: E402
from db.engine import Database  # noqa: E402
from db.migrate import upgrade_async  # noqa: E402
from db.tables import Deployment, Project, Server, User  # noqa: E402
from stack.prepare import ensure_schedule  # noqa: E402
from testing import servers  # noqa: E402
from testing.schedules import Ticks  # noqa: E402
from testing.workflows import running_worker  # noqa: E402
from workflows.app_health import AppHealthOutput  # noqa: E402

LATENCY_MS = 20


@asynccontextmanager
async def health_server() -> AsyncIterator[int]:
    """One HTTP server answering every app's health URL, each answer after LATENCY_MS."""

    async def answer(request: web.Request) -> web.Response:
        await asyncio.sleep(LATENCY_MS / 1000)  # the network round trip being simulated
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = servers.free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def deployments(db: Database, n: int, port: int) -> None:
    """N projects, each with a live release on one server, answering at /app-i/health."""
    spec = {"source": "manifest", "runtime": "process", "service": "web", "port": 8000}
    spec["health_path"] = "/health"
    async with db.session() as session:
        owner = User(name="bench", is_admin=True)
        server = Server(
            handle="bench", host="127.0.0.1", ssh_user="bench", key_ref="secret:none",
            status=ServerStatus.ready,
        )  # fmt: skip
        session.add_all([owner, server])
        await session.flush()
        for i in range(n):
            project = Project(name=f"app-{i}", owner_id=owner.id)
            session.add(project)
            await session.flush()
            session.add(
                Deployment(
                    project_id=project.id,
                    server_id=server.id,
                    port=port,
                    release=f"r{i}",
                    status=DeploymentStatus.running,
                    url=f"http://127.0.0.1:{port}/app-{i}/",
                    details={"spec": spec},
                )
            )
        await session.commit()


async def one_tick(ticks: Ticks, client: Client, n: int) -> tuple[float, int]:
    """(seconds, events) of one tick, every release found up."""
    started = time.perf_counter()
    output = AppHealthOutput.model_validate(await ticks.tick())
    seconds = time.perf_counter() - started
    up = sum(1 for checked in output.checked if checked.up)
    if up != n or output.errors:
        raise RuntimeError(f"{up} of {n} apps up, errors: {output.errors}")
    history = await client.get_workflow_handle(ticks.workflow_ids[-1]).fetch_history()
    return seconds, len(history.events)


async def ticks_with(
    client: Client, db: Database, redis: Redis, settings: Settings, n: int, count: int
) -> list[tuple[float, int]]:
    """``count`` ticks with a worker of these settings (the first one warms it up)."""
    await ensure_schedule(client, settings, APP_HEALTH)
    ticks = Ticks(client, APP_HEALTH.schedule_id(settings))
    async with running_worker(
        client, db, redis, settings.home, settings=settings, task_queue=settings.temporal_task_queue
    ):
        return [await one_tick(ticks, client, n) for _ in range(count)]


async def run(n: int, count: int) -> tuple[dict[str, Any], int]:
    configure_logging("bench", "WARNING")
    with tempfile.TemporaryDirectory() as tmp, servers.redis_server() as redis_url:
        home = Path(tmp)
        database_url = f"sqlite+aiosqlite:///{home / 'bench.db'}"
        await upgrade_async(database_url)
        db = Database(database_url)
        redis = Redis.from_url(redis_url)
        env = await temporal_on_file(home / "temporal.db")
        try:
            async with health_server() as port:
                await deployments(db, n, port)
                base = {"home": home, "app_health_interval_s": 86400.0}
                default = Settings(**base, temporal_task_queue="bench-health")
                serial = Settings(
                    **base, temporal_task_queue="bench-serial", health_check_concurrency=1
                )
                measured = (await ticks_with(env.client, db, redis, default, n, count + 1))[1:]
                # Latency dominates a serial tick: no warm-up tick for it.
                one_at_a_time = await ticks_with(env.client, db, redis, serial, n, 1)
        finally:
            await env.shutdown()
            await redis.aclose()
            await db.dispose()
    tick_s = sorted(s for s, _ in measured)[len(measured) // 2]
    events = measured[-1][1]
    serial_s = one_at_a_time[0][0]
    figures = {
        "deployments": n,
        "latency_ms": LATENCY_MS,
        "concurrency": default.health_check_concurrency,
        "tick_s": round(tick_s, 3),
        "per_app_ms": round(tick_s / n * 1000, 2),
        "events_per_tick": events,
        "serial_tick_s": round(serial_s, 3),
        "speedup": round(serial_s / tick_s, 2),
    }
    print(
        f"app-health tick for {n} deployments (health answers after {LATENCY_MS} ms): "
        f"{tick_s:.2f} s ({figures['per_app_ms']} ms per app), {events} events in its history; "
        f"one check at a time {serial_s:.2f} s: concurrent / serial = {figures['speedup']}x "
        f"faster",
        flush=True,
    )
    return figures, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 measured tick instead of 3")
    parser.add_argument("-n", type=int, default=200, help="deployments (200)")
    args = parser.parse_args()
    report_and_exit(run(args.n, 1 if args.quick else 3))


if __name__ == "__main__":
    main()
