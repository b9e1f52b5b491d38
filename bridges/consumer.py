"""The one generic Redis Streams consumer: validate a message, hand it to Temporal, acknowledge.

Each queue is a :class:`Route` (stream name, message model, action). The :class:`Bridge` reads all
routes' streams through one consumer group and guarantees, per message:

- it is acknowledged only after Temporal accepted the start or signal (at-least-once delivery;
  deterministic workflow IDs with ``REJECT_DUPLICATE`` make a second delivery a no-op);
- a message that fails validation goes to ``<queue>:dlq`` with the reason, and is acknowledged;
- a Temporal error leaves it pending; the claim path (XAUTOCLAIM) retries it once it has been idle
  ``claim_idle_ms``, which is also how messages of a dead consumer are taken over.

The Redis client must return bytes (no ``decode_responses``): a producer may send bytes that are
not UTF-8, and those must reach the dead-letter stream as they were.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError

from core.contracts.base import DATA_FIELD, ContractError, decode_fields
from core.faults import crash_point
from core.logging import bound_context, get_logger

log = get_logger(__name__)

Action = Callable[[Client, Any], Awaitable[None]]
Entry = tuple[str, str, dict[Any, Any]]  # (queue, message id, fields)

DLQ_SUFFIX = ":dlq"
# Backoff after Redis or Temporal errors: doubling from the first value up to the second.
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
# A consumer name with nothing pending that has been idle this long belongs to a gone process.
CONSUMER_FORGET_MS = 60 * 60 * 1000


@dataclass(frozen=True)
class Route:
    """One queue: where its messages come from, what they are, and what Temporal should do."""

    queue: str
    model: Any  # a pydantic model class or a (discriminated) union type
    action: Action  # starts or signals a workflow; raising leaves the message pending
    # Messages with the same key are acted on one after another, in stream order (the commands
    # of one Worker); others run concurrently. None: no order between this queue's messages.
    order_key: Callable[[Any], str | None] | None = None

    @property
    def dlq(self) -> str:
        return dead_letter_stream(self.queue)


def dead_letter_stream(queue: str) -> str:
    return f"{queue}{DLQ_SUFFIX}"


def default_consumer_name() -> str:
    """Unique per process, so a restarted bridge never inherits a dead one's pending list."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _raw_payload(fields: dict[Any, Any]) -> bytes | str:
    """The original ``data`` bytes, or all fields as JSON when there is no ``data`` field."""
    for key, value in fields.items():
        if _text(key) == DATA_FIELD:
            return value  # type: ignore[no-any-return]
    return json.dumps({_text(k): _text(v) for k, v in fields.items()})


def _context(queue: str, message_id: str, message: Any = None) -> dict[str, Any]:
    context = {"queue": queue, "message_id": message_id}
    for name in ("correlation_id", "task_id", "project_id", "request_id"):
        value = getattr(message, name, None)
        if value is not None:
            context[name] = value
    return context


class Bridge:
    def __init__(
        self,
        redis: Redis,
        temporal: Client,
        routes: Iterable[Route],
        *,
        group: str = "bridges",
        consumer: str | None = None,
        claim_idle_ms: int = 30_000,
        batch: int = 100,
        block_ms: int = 1000,
    ) -> None:
        self.redis = redis
        self.temporal = temporal
        self.routes = {route.queue: route for route in routes}
        if not self.routes:
            raise ValueError("a bridge needs at least one route")
        self.group = group
        self.consumer = consumer or default_consumer_name()
        self.claim_idle_ms = claim_idle_ms
        self.batch = max(1, batch)
        self.block_ms = block_ms
        # Claim often enough that an idle message waits at most ~1.5x claim_idle_ms.
        self.claim_interval_s = min(max(claim_idle_ms / 2000, 0.05), 10.0)
        self.ready = asyncio.Event()
        self._in_flight: dict[tuple[str, str], asyncio.Task[None]] = {}
        # (queue, order key) -> the task of the latest message with that key.
        self._ordered_tails: dict[tuple[str, str], asyncio.Task[Any]] = {}
        self._failures = 0
        self._retry_after = 0.0

    # -- setup -------------------------------------------------------------------------------

    async def ensure_groups(self) -> None:
        """Create every stream's consumer group; from id 0, so earlier messages are not skipped."""
        for queue in self.routes:
            try:
                await self.redis.xgroup_create(queue, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            await self.prune_consumers(queue)

    async def prune_consumers(self, queue: str) -> list[str]:
        """Forget consumers of earlier processes that hold nothing and have been idle a while.

        Each bridge process has a name of its own, so every restart leaves one behind. One still
        holding messages is kept: deleting it would drop its pending entries, which XAUTOCLAIM
        hands to a live consumer instead.
        """
        forgotten = []
        for consumer in await self.redis.xinfo_consumers(queue, self.group):
            name = _text(consumer["name"])
            idle_ms = int(consumer.get("inactive", consumer["idle"]))
            if name == self.consumer or consumer["pending"] or idle_ms < CONSUMER_FORGET_MS:
                continue
            await self.redis.xgroup_delconsumer(queue, self.group, name)
            forgotten.append(name)
        if forgotten:
            log.info("forgot idle consumers", queue=queue, consumers=forgotten)
        return forgotten

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set; then finish the messages in hand and return."""
        stop = stop or asyncio.Event()
        if not await self._setup(stop):
            return
        self.ready.set()
        log.info("bridge started", consumer=self.consumer, queues=list(self.routes))
        next_claim = 0.0
        try:
            while not stop.is_set():
                if await self._wait_backoff(stop):
                    break
                try:
                    if time.monotonic() >= next_claim:
                        self._spawn(await self.claim())
                        next_claim = time.monotonic() + self.claim_interval_s
                    if await self._wait_capacity(stop):
                        break
                    self._spawn(await self.read())
                except RedisError as exc:
                    await self._on_redis_error(exc)
        finally:
            await self.drain()
            log.info("bridge stopped", consumer=self.consumer)

    async def _setup(self, stop: asyncio.Event) -> bool:
        """Create the groups, waiting for Redis if it is not up yet; False if asked to stop."""
        while not stop.is_set():
            try:
                await self.ensure_groups()
                self._note_success()
                return True
            except RedisError as exc:
                log.warning("redis unreachable; retrying", error=str(exc))
                self._note_failure()
                if await self._wait_backoff(stop):
                    return False
        return False

    async def drain(self) -> None:
        """Wait for the messages in hand: stopping mid-start would only cause a redelivery."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    async def _wait_backoff(self, stop: asyncio.Event) -> bool:
        """Sleep out a backoff after errors; True if asked to stop meanwhile."""
        delay = self._retry_after - time.monotonic()
        if delay <= 0:
            return False
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            return False
        return True

    async def _wait_capacity(self, stop: asyncio.Event) -> bool:
        """Keep at most ``batch`` messages in hand; True if asked to stop meanwhile."""
        while len(self._in_flight) >= self.batch:
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait(
                    {stopping, *self._in_flight.values()}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                stopping.cancel()
            if stop.is_set():
                return True
        return False

    async def _on_redis_error(self, exc: RedisError) -> None:
        if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
            # The stream or group vanished (Redis restarted without persistence): recreate them.
            log.warning("consumer group missing; recreating", error=str(exc))
            await self._guard(self.ensure_groups())
            return
        log.warning("redis error; backing off", error=str(exc))
        self._note_failure()

    async def _guard(self, awaitable: Awaitable[None]) -> None:
        try:
            await awaitable
        except RedisError as exc:
            log.warning("redis error; backing off", error=str(exc))
            self._note_failure()

    def _note_failure(self) -> None:
        self._failures += 1
        delay = min(BACKOFF_MIN_S * 2 ** (self._failures - 1), BACKOFF_MAX_S)
        self._retry_after = time.monotonic() + delay

    def _note_success(self) -> None:
        self._failures = 0
        self._retry_after = 0.0

    # -- reading -----------------------------------------------------------------------------

    async def read(self) -> list[Entry]:
        """New messages of every route's stream, blocking up to ``block_ms`` for the first."""
        count = self.batch - len(self._in_flight)
        response = await self.redis.xreadgroup(
            self.group,
            self.consumer,
            dict.fromkeys(self.routes, ">"),
            count=count,
            block=self.block_ms,
        )
        if not response:
            return []
        streams: Any = response.items() if isinstance(response, dict) else response  # RESP3/2
        entries: list[Entry] = []
        for stream, messages in streams:
            # RESP3 nests each stream's messages one level deeper.
            if messages and isinstance(messages[0], list) and len(messages) == 1:
                messages = messages[0]
            queue = _text(stream)
            entries.extend((queue, _text(mid), fields) for mid, fields in messages)
        return entries

    async def claim(self) -> list[Entry]:
        """Take over messages idle longer than ``claim_idle_ms``: a dead consumer's or our own
        that failed transiently. Skips what this process is still working on."""
        entries: list[Entry] = []
        for queue in self.routes:
            start = "0-0"
            while len(entries) < self.batch:
                reply = await self.redis.xautoclaim(
                    queue,
                    self.group,
                    self.consumer,
                    self.claim_idle_ms,
                    start_id=start,
                    count=self.batch,
                )
                start, claimed = _text(reply[0]), reply[1]
                for mid, fields in claimed:
                    if mid is None or fields is None:
                        continue  # trimmed away; Redis 7 drops these from the pending list
                    message_id = _text(mid)
                    if (queue, message_id) not in self._in_flight:
                        entries.append((queue, message_id, fields))
                if start == "0-0":
                    break
        if entries:
            log.info("claimed idle messages", count=len(entries))
        return entries

    def _spawn(self, entries: list[Entry]) -> None:
        for queue, message_id, fields in entries:
            key = (queue, message_id)
            if key in self._in_flight:
                continue
            task = asyncio.create_task(self.handle(queue, message_id, fields))
            self._in_flight[key] = task
            task.add_done_callback(partial(self._done, key))

    def _done(self, key: tuple[str, str], _: asyncio.Task[None]) -> None:
        self._in_flight.pop(key, None)

    # -- one message -------------------------------------------------------------------------

    async def handle(self, queue: str, message_id: str, fields: dict[Any, Any]) -> None:
        """Validate, act, acknowledge. Never raises: every outcome is logged."""
        try:
            await self._handle(self.routes[queue], message_id, fields)
        except Exception:
            # A bug must not kill the loop; the message stays pending and is claimed again.
            log.exception("unexpected error handling a message", queue=queue, message_id=message_id)
            self._note_failure()

    async def _handle(self, route: Route, message_id: str, fields: dict[Any, Any]) -> None:
        queue = route.queue
        try:
            message = decode_fields(route.model, fields)
        except ContractError as exc:
            with bound_context(**_context(queue, message_id)):
                await self._dead_letter(route, message_id, fields, exc.reason)
            return
        with bound_context(**_context(queue, message_id, message)):
            if not await self._act_in_order(route, message):
                return
            crash_point("bridge.before_ack")
            try:
                await self.redis.xack(queue, self.group, message_id)
            except RedisError as exc:
                # Temporal has it; the redelivery after the claim will be a harmless duplicate.
                log.warning("ack failed; the message will be redelivered", error=str(exc))
                self._note_failure()

    async def _act_in_order(self, route: Route, message: Any) -> bool:
        """``_act``, after the earlier messages that share this one's order key.

        Tasks start in the order their messages were read, and nothing above awaits before the
        tail is taken, so each message waits exactly for the one before it with the same key.
        """
        key = route.order_key(message) if route.order_key else None
        current = asyncio.current_task()
        if key is None or current is None:
            return await self._act(route, message)
        slot = (route.queue, key)
        previous = self._ordered_tails.get(slot)
        self._ordered_tails[slot] = current
        try:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            return await self._act(route, message)
        finally:
            if self._ordered_tails.get(slot) is current:
                del self._ordered_tails[slot]

    async def _act(self, route: Route, message: Any) -> bool:
        """True once Temporal accepted the message (a duplicate counts as accepted)."""
        try:
            await route.action(self.temporal, message)
        except WorkflowAlreadyStartedError:
            log.info("workflow already started; acknowledging the duplicate")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Unreachable server, timeout, or a bug: keep it pending; the claim path retries.
            log.warning(
                "temporal did not accept the message; it stays pending",
                error=repr(exc),
                retry_after_ms=self.claim_idle_ms,
            )
            self._note_failure()
            return False
        else:
            log.info("message accepted by temporal")
        self._note_success()
        return True

    async def _dead_letter(
        self, route: Route, message_id: str, fields: dict[Any, Any], reason: str
    ) -> None:
        entry: dict[Any, Any] = {
            "reason": reason,
            "data": _raw_payload(fields),
            "original_id": message_id,
            "queue": route.queue,
            "failed_at": datetime.now(UTC).isoformat(),
        }
        try:
            # One transaction: a crash cannot leave the entry dead-lettered twice or un-acked.
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(route.dlq, entry)
                pipe.xack(route.queue, self.group, message_id)
                await pipe.execute()
        except RedisError as exc:
            log.warning("dead-lettering failed; the message stays pending", error=str(exc))
            self._note_failure()
            return
        log.warning("invalid message dead-lettered", reason=reason, dlq=route.dlq)
