"""Housekeeping activities of the reaper's runs (workflows/reaper.py): the Redis streams trimmed
without losing an entry a consumer has not acknowledged (infra/streams.py)."""

from __future__ import annotations

from redis.asyncio import Redis
from temporalio import activity

from core.logging import get_logger
from core.settings import Settings
from infra.streams import TrimReport, trim_streams

log = get_logger(__name__)


class HousekeepingActivities:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis

    @activity.defn
    async def trim_streams(self) -> TrimReport:
        report = await trim_streams(self.redis, self.settings.stream_retention_hours * 3600)
        log.info(
            "streams trimmed",
            streams=report.streams,
            entries=report.entries,
            deleted=len(report.deleted),
        )
        return report
