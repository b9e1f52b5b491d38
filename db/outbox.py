"""The transactional outbox: stream entries committed with the rows they announce."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.faults import crash_point
from core.logging import get_logger
from db.engine import Database
from db.tables import OutboxMessage, utcnow

log = get_logger(__name__)


def enqueue(session: AsyncSession, stream: str, fields: dict[str, str]) -> OutboxMessage:
    """Add a stream entry to the session's transaction; it is sent once that commits."""
    message = OutboxMessage(stream=stream, fields=fields)
    session.add(message)
    return message


async def publish(db: Database, redis: Redis, ids: list[int] | None = None) -> int:
    """XADD unpublished entries (all of them, or just ``ids``) in order; return how many went."""
    async with db.session() as session:
        query = select(OutboxMessage).where(col(OutboxMessage.published_at).is_(None))
        if ids is not None:
            query = query.where(col(OutboxMessage.id).in_(ids))
        pending = (await session.exec(query.order_by(col(OutboxMessage.id)).limit(500))).all()
        sent = 0
        for message in pending:
            crash_point("outbox.before_xadd")
            fields: dict[Any, Any] = dict(message.fields)
            # No length cap, which would drop entries a consumer has not read: housekeeping
            # trims what every consumer acknowledged (infra/streams.py).
            await redis.xadd(message.stream, fields)
            await session.exec(
                update(OutboxMessage)
                .where(col(OutboxMessage.id) == message.id)
                .values(published_at=utcnow())
            )
            await session.commit()
            sent += 1
        return sent


async def relay_forever(db: Database, redis: Redis, interval: float = 0.5) -> None:
    """Send whatever a crashed or unlucky writer left behind."""
    while True:
        try:
            await publish(db, redis)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("outbox relay failed; retrying")
        await asyncio.sleep(interval)
