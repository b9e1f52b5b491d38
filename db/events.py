"""Reading a task's progress events: the stored ones, then new ones as they happen.

The database is the record (events are committed before their stream entry is sent, through the
outbox); the Redis stream ``task_progress:{task_id}`` only wakes a follower up. So a follower
re-reads the database after each wake-up and skips what it has by ``seq``: nothing is lost when
Redis is late or away (the wait times out and the database is read anyway), nothing is repeated.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlmodel import col, select

from core.enums import TERMINAL_EVENTS, TERMINAL_STATUSES
from core.ids import task_progress_stream
from core.logging import get_logger
from db.engine import Database
from db.tables import Task, TaskEventRow

log = get_logger(__name__)


async def list_events(
    db: Database, task_id: str, *, after: int = 0, limit: int | None = None
) -> list[TaskEventRow]:
    async with db.session() as session:
        query = (
            select(TaskEventRow)
            .where(TaskEventRow.task_id == task_id, col(TaskEventRow.seq) > after)
            .order_by(col(TaskEventRow.seq))
        )
        if limit is not None:
            query = query.limit(limit)
        rows = (await session.exec(query)).all()
    return list(rows)


async def _task_is_terminal(db: Database, task_id: str) -> bool:
    async with db.session() as session:
        task = await session.get(Task, task_id)
    return task is None or task.status in TERMINAL_STATUSES


async def _stream_tail(redis: Redis, stream: str) -> str:
    """The id of the newest entry: waiting from there sees only what comes after."""
    try:
        newest = await redis.xrevrange(stream, count=1)
    except RedisError:
        return "0-0"
    if not newest:
        return "0-0"
    entry_id = newest[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def _wait_for_news(redis: Redis, stream: str, cursor: str, seconds: float) -> str:
    """Block until the stream has entries past ``cursor`` or ``seconds`` pass; the new cursor."""
    try:
        found: Any = await redis.xread(
            {stream: cursor}, block=max(1, int(seconds * 1000)), count=100
        )
    except RedisError as exc:
        # Without Redis the database is still the record: poll it at the same pace.
        log.warning("task progress stream unavailable; polling", error=str(exc))
        await asyncio.sleep(seconds)
        return cursor
    return _newest_id(found) or cursor


def _newest_id(found: Any) -> str | None:
    """The last entry id of a one-stream XREAD reply (a list in RESP2, a dict in RESP3)."""
    if not found:
        return None
    entries = next(iter(found.values())) if isinstance(found, dict) else found[0][1]
    if not entries:
        return None
    entry_id = entries[-1][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def follow(
    db: Database, redis: Redis, task_id: str, *, after: int = 0, wait: float = 5.0
) -> AsyncIterator[TaskEventRow]:
    """The task's events after ``after``, then new ones live; ends after a terminal event.

    Also ends when the task is already finished and every event has been sent.
    """
    stream = task_progress_stream(task_id)
    # Taken before the first read, so an event committed in between still wakes us.
    cursor = await _stream_tail(redis, stream)
    last = after
    while True:
        events = await list_events(db, task_id, after=last)
        for event in events:
            yield event
            last = event.seq
            if event.type in TERMINAL_EVENTS:
                return
        if not events and await _task_is_terminal(db, task_id):
            # The terminal event commits with the status: re-read once, then stop.
            for event in await list_events(db, task_id, after=last):
                yield event
            return
        cursor = await _wait_for_news(redis, stream, cursor, wait)
