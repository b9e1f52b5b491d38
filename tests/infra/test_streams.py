"""Housekeeping trims the Redis streams (real Redis): what every consumer group acknowledged and
is older than the retention goes; nothing a consumer still needs does."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from infra.streams import trim_streams

HOUR_MS = 3600 * 1000


async def add_old(redis: Redis, stream: str, count: int, hours_ago: float) -> list[str]:
    """``count`` entries whose ids say they were added ``hours_ago``."""
    start = int(time.time() * 1000 - hours_ago * HOUR_MS)
    ids = []
    for n in range(count):
        added = await redis.xadd(stream, {"n": str(n)}, id=f"{start}-{n}")
        ids.append(added.decode())
    return ids


async def ids_of(redis: Redis, stream: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in await redis.xrange(stream)]


async def test_entries_a_group_has_not_acknowledged_stay_and_acknowledged_old_ones_go(
    redis: Redis,
) -> None:
    queue = "engineering:queue"
    old = await add_old(redis, queue, 6, hours_ago=100)
    await redis.xgroup_create(queue, "bridge", id="0")
    await redis.xgroup_create(queue, "audit", id="0")
    # The bridge read four and acknowledged the first three; the audit group read all six and
    # acknowledged them all.
    read = await redis.xreadgroup("bridge", "b1", {queue: ">"}, count=4)
    assert len(read[0][1]) == 4
    await redis.xack(queue, "bridge", *old[:3])
    await redis.xreadgroup("audit", "a1", {queue: ">"})
    await redis.xack(queue, "audit", *old)
    fresh = (await redis.xadd(queue, {"n": "new"})).decode()  # newer than the retention

    report = await trim_streams(redis, retention_s=24 * 3600)
    # The bridge's pending fourth entry and everything after it stay.
    assert await ids_of(redis, queue) == [*old[3:], fresh]
    assert report.trimmed == {queue: 3}
    pending = await redis.xpending(queue, "bridge")
    assert pending["pending"] == 1  # still there to be claimed

    # Once acknowledged, it goes too; the two never delivered to the bridge stay.
    await redis.xack(queue, "bridge", old[3])
    await trim_streams(redis, retention_s=24 * 3600)
    assert await ids_of(redis, queue) == [*old[4:], fresh]


async def test_a_stream_without_groups_keeps_its_retention_and_goes_when_empty(
    redis: Redis,
) -> None:
    progress, done = "task_progress:t1", "task_progress:t0"
    old = await add_old(redis, progress, 3, hours_ago=100)
    recent = await add_old(redis, progress, 2, hours_ago=1)
    await add_old(redis, done, 2, hours_ago=200)
    report = await trim_streams(redis, retention_s=24 * 3600)
    assert await ids_of(redis, progress) == recent
    assert report.trimmed == {progress: len(old), done: 2}
    assert report.deleted == [done] and not await redis.exists(done)


async def test_a_group_that_read_nothing_keeps_everything(redis: Redis) -> None:
    chat = "telegram:chat:7"
    old = await add_old(redis, chat, 4, hours_ago=500)
    await redis.xgroup_create(chat, "bot", id="0")
    report = await trim_streams(redis, retention_s=3600)
    assert await ids_of(redis, chat) == old and report.trimmed == {}
