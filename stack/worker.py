"""The Temporal worker: every workflow and activity of the orchestrator on one task queue.

``python -m stack.worker`` reads Settings(), connects to Temporal, the database and Redis, polls
until SIGTERM or SIGINT, then shuts down gracefully (running activities get a grace period).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from sqlmodel import select
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.forge import ForgeActivities
from activities.tasks import TaskActivities
from activities.temporal import TemporalActivities
from api.db import Database
from core.logging import configure_logging, get_logger
from core.readiness import clear_ready, mark_ready
from core.settings import Settings
from core.temporal import LogContextInterceptor, connect, ensure_search_attributes
from workflows.engineering import EngineeringWorkflow
from workflows.scaffold import ScaffoldWorkflow

log = get_logger("stack.worker")

SERVICE = "worker"
# The project templates ship with the code: <repo>/deploy/templates/<name>.
TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "deploy" / "templates"
SERVICE_TEMPLATE_DIR = TEMPLATES_DIR / "service"
WORKFLOWS = [EngineeringWorkflow, ScaffoldWorkflow]


def workflow_runner() -> SandboxedWorkflowRunner:
    """The sandbox workflows run in (the Replayer uses the same one).

    redis is passed through: workflow code never uses it, but a redis connection collected by the
    garbage collector while a workflow activation runs imports modules from its ``__del__``,
    which the sandbox would otherwise re-import and warn about.
    """
    restrictions = SandboxRestrictions.default.with_passthrough_modules("redis")
    return SandboxedWorkflowRunner(restrictions=restrictions)


def build_worker(
    client: Client,
    settings: Settings,
    db: Database,
    redis: Redis,
    *,
    task_queue: str | None = None,
    template_dir: Path | None = None,
    **options: Any,
) -> Worker:
    """A worker with all workflows and activities; ``options`` go to ``Worker`` as they are."""
    tasks = TaskActivities(db, redis)
    forge = ForgeActivities(
        settings.forge_dir, template_dir or settings.template_dir or SERVICE_TEMPLATE_DIR
    )
    temporal = TemporalActivities(client)
    options.setdefault("graceful_shutdown_timeout", timedelta(seconds=10))
    options.setdefault("workflow_runner", workflow_runner())
    options.setdefault("interceptors", [LogContextInterceptor()])
    # Heartbeats carry cancellations to activities; by default they are held back up to 80% of
    # the heartbeat timeout, so a cancelled wait would linger ~8 s.
    options.setdefault("max_heartbeat_throttle_interval", timedelta(seconds=2))
    options.setdefault("default_heartbeat_throttle_interval", timedelta(seconds=2))
    return Worker(
        client,
        task_queue=task_queue or settings.temporal_task_queue,
        workflows=WORKFLOWS,
        activities=[
            tasks.start_task,
            tasks.record_event,
            tasks.finish_task,
            tasks.get_project,
            tasks.set_project_status,
            tasks.record_repository,
            forge.scaffold_repository,
            forge.find_repository,
            temporal.wait_for_scaffold,
        ],
        **options,
    )


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    client = await connect(settings)
    try:
        await ensure_search_attributes(client, settings.temporal_namespace)
    except Exception as exc:  # Temporal Cloud does not let workers register them; `up` does
        log.warning("search attributes not registered", error=str(exc))
    db = Database(settings.effective_database_url)
    redis = Redis.from_url(settings.effective_redis_url)
    worker = build_worker(client, settings, db, redis)
    try:
        await _check(db, redis)
        async with worker:
            mark_ready(settings, SERVICE)
            log.info("worker polling", task_queue=worker.task_queue)
            await stop.wait()
            log.info("worker stopping")
            clear_ready(settings, SERVICE)
    finally:
        await redis.aclose()
        await db.dispose()
    log.info("worker stopped")


async def _check(db: Database, redis: Redis) -> None:
    """Reach the database and Redis before polling: a worker that cannot is not ready."""
    async with db.session() as session:
        await session.exec(select(1))
    await redis.ping()


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop)


def main() -> None:
    settings = Settings()
    configure_logging(SERVICE, settings.log_level, settings.logs_dir)
    status = 0
    try:
        asyncio.run(_main(settings))
    except Exception:
        log.exception("worker crashed")
        status = 1
    logging.shutdown()
    # The Temporal core runtime can abort at interpreter exit (sdk-python #300): leave at once.
    os._exit(status)


if __name__ == "__main__":
    main()
