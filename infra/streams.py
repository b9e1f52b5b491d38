"""Trimming the Redis streams without losing what a consumer still needs.

Writers add to the streams without a length cap (a cap drops the oldest entries whether or not
they were read). Housekeeping (the reaper's run, workflows/reaper.py) trims each stream instead:

- an entry newer than the retention is kept whatever its state (watchers replay them, people
  read the dead letters);
- an older one goes only once every consumer group of the stream is past it: delivered to the
  group and acknowledged (an entry still pending in any group, and everything after it, stays);
- a stream with no group (a task's progress, a dead-letter stream) keeps its retention only, and
  one left empty goes.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field
from redis.asyncio import Redis


class TrimReport(BaseModel):
    streams: int = Field(default=0, description="Streams looked at")
    trimmed: dict[str, int] = Field(
        default_factory=dict, description="Entries removed, by stream (only those with any)"
    )
    deleted: list[str] = Field(default_factory=list, description="Empty streams removed")

    @property
    def entries(self) -> int:
        return sum(self.trimmed.values())


async def trim_streams(redis: Redis, retention_s: float, now_s: float | None = None) -> TrimReport:
    """Trim every stream of the database as the module says."""
    report = TrimReport()
    cutoff = _id_at((time.time() if now_s is None else now_s) - retention_s)
    async for raw in redis.scan_iter(_type="stream", count=500):
        stream = raw.decode() if isinstance(raw, bytes) else str(raw)
        report.streams += 1
        removed, deleted = await trim_stream(redis, stream, cutoff)
        if removed:
            report.trimmed[stream] = removed
        if deleted:
            report.deleted.append(stream)
    return report


async def trim_stream(redis: Redis, stream: str, cutoff: tuple[int, int]) -> tuple[int, bool]:
    """Entries of ``stream`` below ``cutoff`` that every group is past: removed. Returns how
    many, and whether the stream (empty, with no group) was removed itself."""
    groups: list[dict[str, Any]] = await redis.xinfo_groups(stream)
    floor = cutoff
    for group in groups:
        floor = min(floor, await _group_floor(redis, stream, group))
    removed = 0
    if floor > (0, 0):
        removed = int(await redis.xtrim(stream, minid=f"{floor[0]}-{floor[1]}", approximate=False))
    if not groups and await redis.xlen(stream) == 0:
        # Deleted only if still empty and groupless (a writer may have added meanwhile).
        deleted = bool(await redis.eval(DELETE_IF_EMPTY, 1, stream))
        return removed, deleted
    return removed, False


# KEYS[1] the stream: deleted when it holds no entry and no group.
DELETE_IF_EMPTY = """
if redis.call('XLEN', KEYS[1]) == 0 and #redis.call('XINFO', 'GROUPS', KEYS[1]) == 0 then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


async def _group_floor(redis: Redis, stream: str, group: dict[str, Any]) -> tuple[int, int]:
    """The first entry ``group`` may still need: its oldest pending one, else the one after
    the last it was given."""
    name = _text(group["name"])
    if int(group.get("pending") or 0) > 0:
        summary = await redis.xpending(stream, name)
        return _parse_id(_text(summary["min"]))
    ms, seq = _parse_id(_text(group["last-delivered-id"]))
    return (ms, seq + 1)


def _id_at(seconds: float) -> tuple[int, int]:
    return (max(0, int(seconds * 1000)), 0)


def _parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return (int(ms), int(seq or 0))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
