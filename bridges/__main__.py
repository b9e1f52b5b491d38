"""``python -m bridges``: the Redis Streams -> Temporal bridges as one process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from redis.asyncio import Redis
from temporalio.client import Client

from bridges.consumer import BACKOFF_MAX_S, Bridge
from bridges.routes import routes
from core.logging import configure_logging, get_logger
from core.readiness import clear_ready, mark_ready
from core.settings import Settings
from core.temporal import connect

SERVICE = "bridges"
log = get_logger("bridges")


async def _connect_temporal(settings: Settings, stop: asyncio.Event) -> Client | None:
    """Connect, retrying while the server is still starting; None if asked to stop first."""
    delay = 0.2
    while not stop.is_set():
        try:
            return await connect(settings)
        except Exception as exc:  # the SDK raises RuntimeError for an unreachable server
            log.warning("temporal unreachable; retrying", error=str(exc), retry_in_s=delay)
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            delay = min(delay * 2, BACKOFF_MAX_S)
    return None


async def _serve(settings: Settings, stop: asyncio.Event) -> None:
    redis = Redis.from_url(settings.effective_redis_url)  # bytes, not decoded: see consumer.py
    try:
        client = await _connect_temporal(settings, stop)
        if client is None:
            return
        bridge = Bridge(
            redis,
            client,
            routes(settings),
            claim_idle_ms=settings.bridge_claim_idle_ms,
            batch=settings.bridge_batch,
            block_ms=settings.bridge_block_ms,
        )
        running = asyncio.create_task(bridge.run(stop))
        ready = asyncio.create_task(bridge.ready.wait())
        await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
        if bridge.ready.is_set():
            mark_ready(settings, SERVICE)
        ready.cancel()
        await running
    finally:
        clear_ready(settings, SERVICE)
        await redis.aclose()


async def main() -> None:
    settings = Settings()
    configure_logging(SERVICE, settings.log_level, settings.logs_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await _serve(settings, stop)


def run() -> None:
    status = 0
    try:
        asyncio.run(main())
    except Exception:
        log.exception("bridges failed")
        status = 1
    logging.shutdown()
    # The Temporal core runtime can abort at interpreter exit (sdk-python #300): leave at once.
    os._exit(status)


if __name__ == "__main__":
    run()
