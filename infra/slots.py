"""The limit on concurrent Workers (``Settings.max_workers``), shared by every worker process.

A slot is a member of one Redis sorted set, ``"{workflow_id} {worker_id}"`` scored by the time it
was taken; taking one is a single Lua script, so two processes cannot both take the last slot.
A Worker's slot is freed when its container is removed; a slot whose workflow closed without
freeing it (its process was killed) is taken back by whoever waits for one, and by the reaper.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

SLOTS_KEY = "orchestrator:worker-slots"
POLL_S = 1.0

# Already holding one counts as taking it: a retried create must not wait for its own slot.
_TAKE = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
"""


def _member(workflow_id: str, worker_id: str) -> str:
    return f"{workflow_id} {worker_id}"


class WorkerSlots:
    """``limit`` slots under ``key``; other pools (a project's one deploy at a time) use a key of
    their own."""

    def __init__(self, redis: Redis, limit: int, key: str = SLOTS_KEY) -> None:
        self.redis = redis
        self.limit = limit
        self.key = key
        self._take = redis.register_script(_TAKE)

    async def try_take(self, workflow_id: str, worker_id: str) -> bool:
        taken = await self._take(
            keys=[self.key], args=[_member(workflow_id, worker_id), self.limit, time.time()]
        )
        return bool(taken)

    async def take(
        self,
        workflow_id: str,
        worker_id: str,
        is_open: Callable[[str], Awaitable[bool]],
        on_wait: Callable[[int], Awaitable[None]],
        tick: Callable[[], None],
    ) -> float:
        """Wait for a slot; returns the seconds waited. ``on_wait(in_use)`` is called once when
        the wait begins; ``tick`` on every poll (a heartbeat)."""
        started = time.monotonic()
        if await self.try_take(workflow_id, worker_id):
            return 0.0
        await on_wait(await self.in_use())
        while True:
            tick()
            await self.free_closed(is_open)
            if await self.try_take(workflow_id, worker_id):
                return time.monotonic() - started
            await asyncio.sleep(POLL_S)

    async def release(self, workflow_id: str, worker_id: str) -> None:
        await self.redis.zrem(self.key, _member(workflow_id, worker_id))

    async def release_worker(self, worker_id: str) -> None:
        """Free the slot of ``worker_id`` whichever workflow holds it."""
        for member in await self.holders():
            if member.split(" ", 1)[-1] == worker_id:
                await self.redis.zrem(self.key, member)

    async def in_use(self) -> int:
        return int(await self.redis.zcard(self.key))

    async def holders(self) -> list[str]:
        members = await self.redis.zrange(self.key, 0, -1)
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    async def free_closed(self, is_open: Callable[[str], Awaitable[bool]]) -> list[str]:
        """Free the slots of workflows no longer running; returns their worker ids."""
        freed = []
        for member in await self.holders():
            workflow_id, _, worker_id = member.partition(" ")
            if not await is_open(workflow_id):
                await self.redis.zrem(self.key, member)
                freed.append(worker_id)
        return freed
