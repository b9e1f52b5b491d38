"""Temporal activities: thin classes per department that call infra/ and db/.

Shared by all of them: heartbeats for work that blocks (a dead worker is noticed, a cancel gets
through) and the translation of infrastructure failures into Temporal's (retry or not).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.logging import get_logger
from infra.errors import InfraError

log = get_logger(__name__)

T = TypeVar("T")

DEFAULT_INTERVAL = 2.0


def _interval() -> float:
    # Beat several times per heartbeat timeout, so one late beat does not time the activity out.
    timeout = activity.info().heartbeat_timeout
    if timeout is None:
        return DEFAULT_INTERVAL
    return max(0.1, min(DEFAULT_INTERVAL, timeout.total_seconds() / 4))


@contextlib.asynccontextmanager
async def heartbeating(*details: Any) -> AsyncIterator[None]:
    """Heartbeat in the background while the body runs.

    The server learns within the heartbeat timeout that a killed worker's activity is gone (and
    retries it elsewhere), and a cancellation reaches the activity with the next heartbeat.
    """

    async def beat() -> None:
        interval = _interval()
        while True:
            activity.heartbeat(*details)
            # Paces the beats of the work running beside it: it waits for nothing and polls
            # nothing, and it ends with that work.
            await asyncio.sleep(interval)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def run_blocking(function: Callable[..., T], *args: Any) -> T:
    """Run blocking work (git, copier) in a thread and keep heartbeating until it returns.

    A cancelled activity stops waiting at once; the thread finishes its step on its own, which is
    why blocking work run this way must be idempotent.
    """
    async with heartbeating(getattr(function, "__name__", "work")):
        return await asyncio.to_thread(function, *args)


async def each_at_most(
    limit: int, keys: Sequence[str], call: Callable[[str], Awaitable[T]], what: str
) -> tuple[list[T], dict[str, str]]:
    """``call`` for every key, at most ``limit`` at a time, heartbeating: the results, and why
    each key whose call raised failed (logged; the others go on, the next tick tries again)."""
    slots = asyncio.Semaphore(max(1, limit))
    results: list[T] = []
    errors: dict[str, str] = {}

    async def one(key: str) -> None:
        async with slots:
            try:
                results.append(await call(key))
            except Exception as exc:
                log.warning(f"{what}: one failed", key=key, error=str(exc))
                errors[key] = f"{type(exc).__name__}: {exc}"

    async with heartbeating(f"{len(keys)} {what}"):
        await asyncio.gather(*(one(key) for key in keys))
    return results, errors


@contextlib.contextmanager
def infra_failures() -> Iterator[None]:
    """An integration's failure as Temporal's: retried only when the integration says a retry can
    help, after the delay it asked for (a rate limit's)."""
    try:
        yield
    except InfraError as exc:
        delay = timedelta(seconds=max(1.0, exc.retry_after)) if exc.retry_after else None
        raise ApplicationError(
            str(exc), type=exc.kind, non_retryable=not exc.retryable, next_retry_delay=delay
        ) from exc
