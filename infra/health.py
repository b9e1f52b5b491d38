"""Is an app up: its health URL asked over HTTP until it answers 2xx or time runs out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

# How often a health URL is asked while the app is not up yet.
HEALTH_INTERVAL_S = 0.5


async def check_health(
    url: str, within_s: float, on_wait: Callable[[str], object] = lambda problem: None
) -> str | None:
    """None once ``url`` answers 2xx; else, after ``within_s``, what went wrong last.
    ``on_wait`` hears each problem before the next try (an activity heartbeats with it)."""
    deadline = time.monotonic() + within_s
    problem = "no answer"
    async with httpx.AsyncClient(timeout=5.0) as client:
        while True:
            try:
                response = await client.get(url)
                if response.is_success:
                    return None
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if time.monotonic() >= deadline:
                return problem
            on_wait(problem)
            await asyncio.sleep(HEALTH_INTERVAL_S)
