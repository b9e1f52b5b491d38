"""``python -m bridges``: the Redis Streams -> Temporal bridges as one process."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from bridges.consumer import BACKOFF_MAX_S, Bridge
from bridges.routes import routes
from core.logging import get_logger
from core.readiness import clear_ready, mark_ready
from core.service import run_service
from core.settings import Settings
from core.temporal import connect_when_up

SERVICE = "bridges"
log = get_logger("bridges")


async def _serve(settings: Settings, stop: asyncio.Event) -> None:
    redis = Redis.from_url(settings.effective_redis_url)  # bytes, not decoded: see consumer.py
    try:
        client = await connect_when_up(settings, stop, max_delay=BACKOFF_MAX_S)
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


if __name__ == "__main__":
    run_service(SERVICE, _serve)
