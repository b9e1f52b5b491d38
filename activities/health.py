"""Activities of the scheduled checks: read each server over SSH, record what was found, open
and resolve incidents, tell the chats (workflows/server_health.py).

The SSH key is read and decrypted inside ``check_server_health`` and goes no further than its
Ansible run's private directory, as in provisioning (activities/servers.py).
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from temporalio import activity

from activities import heartbeating
from activities.servers import ssh_target
from core.contracts.chat import CHATS_KEY
from core.crypto import Vault
from core.enums import CHECKED_SERVER_STATUSES, IncidentKind, ServerStatus
from core.faults import crash_point
from core.logging import get_logger
from core.settings import Settings
from db import incidents, outbox, servers, users
from db.engine import Database
from db.incidents import Check
from db.tables import Server
from infra.ansible import AnsibleRunner
from infra.server_probe import ServerReading, Thresholds, probe_server

log = get_logger(__name__)


class HealthPlan(BaseModel):
    """What one tick checks, and how many checks run at once."""

    servers: list[str] = Field(default_factory=list, description="Handles of the servers")
    concurrency: int = Field(default=10, ge=1)


class ServerCheckInput(BaseModel):
    handle: str
    tick: str = Field(description="The run of the tick: a retry within it counts once")


class ServerCheckOutput(BaseModel):
    handle: str
    status: ServerStatus
    failures: int = Field(description="Failed reachability checks in a row")
    problems: list[str] = Field(default_factory=list)
    opened: list[int] = Field(default_factory=list, description="Incidents this check opened")
    resolved: list[int] = Field(default_factory=list, description="Incidents it resolved")
    seconds: float = 0.0


class HealthActivities:
    def __init__(
        self, settings: Settings, db: Database, redis: Redis, vault: Vault, runner: AnsibleRunner
    ) -> None:
        self.settings = settings
        self.db = db
        self.redis = redis
        self.vault = vault
        self.runner = runner

    @activity.defn
    async def plan_server_health(self) -> HealthPlan:
        """The provisioned servers, whatever their last check said."""
        async with self.db.session() as session:
            handles = await servers.handles_with_status(session, CHECKED_SERVER_STATUSES)
        return HealthPlan(servers=handles, concurrency=self.settings.health_check_concurrency)

    @activity.defn
    async def check_server_health(self, request: ServerCheckInput) -> ServerCheckOutput:
        """Read the server over SSH, then record its status and reading and what the reading
        means for its incidents (unreachable, disk low), in one transaction."""
        target, server = await ssh_target(self.db, self.vault, request.handle)
        async with heartbeating(request.handle):
            reading = await probe_server(
                self.runner, target, server.apps_root, run_name=f"health-{request.handle}"
            )
        thresholds = Thresholds(
            disk_low_percent=self.settings.server_disk_low_percent,
            memory_low_percent=self.settings.server_memory_low_percent,
        )
        problems = reading.problems(thresholds) if reading.reachable else []
        status = (
            ServerStatus.unreachable
            if not reading.reachable
            else ServerStatus.degraded
            if problems
            else ServerStatus.ready
        )
        chats = await self._admin_chats()
        async with self.db.session() as session:
            await servers.record_health(
                session,
                server.id,
                status,
                error=reading.error if not reading.reachable else "; ".join(problems) or None,
                health=reading.model_dump(exclude={"reachable", "error"}),
            )
            # A Conflict (another writer opened the same incident meanwhile) fails this
            # attempt; the retry finds that incident open.
            recorded = [
                await incidents.record_check(
                    session,
                    check,
                    tick=request.tick,
                    threshold=self.settings.incident_after_failures,
                    chats=chats,
                )
                for check in _checks(server, reading, thresholds)
            ]
        # Killed here, the retry counts nothing twice (the tick is kept with the streak) and
        # the notes already committed go out through the outbox's relay.
        crash_point("health.after_record")
        await self._publish([note for r in recorded for note in r.notes])
        output = ServerCheckOutput(
            handle=request.handle,
            status=status,
            failures=recorded[0].failures,
            problems=problems,
            opened=[r.opened for r in recorded if r.opened is not None],
            resolved=[r.resolved for r in recorded if r.resolved is not None],
            seconds=round(reading.seconds, 3),
        )
        log.info("server checked", **output.model_dump(exclude={"problems"}))
        return output

    async def _publish(self, notes: list[int]) -> None:
        """Send the notes now; if Redis is away, the outbox's relay sends them later."""
        if not notes:
            return
        try:
            await outbox.publish(self.db, self.redis, notes)
        except Exception as exc:
            log.warning("outbox publish deferred", error=str(exc))

    async def _admin_chats(self) -> list[int]:
        """The chats of the admins (settings' Telegram admins and admin users with a Telegram
        id); each added to the chats the bot reads."""
        async with self.db.session() as session:
            chats = await users.admin_telegram_ids(session)
        chats = list(dict.fromkeys([*self.settings.telegram_admins, *chats]))
        if chats:
            await self.redis.sadd(CHATS_KEY, *[str(chat) for chat in chats])
        return chats


def _checks(server: Server, reading: ServerReading, thresholds: Thresholds) -> list[Check]:
    """Reachability always; the disk only when it could be read."""
    subject = f"server:{server.handle}"
    checks = [
        Check(
            kind=IncidentKind.server_unreachable,
            subject=subject,
            ok=reading.reachable,
            title=f"server {server.handle} ({server.host}) is unreachable over SSH",
            evidence={"error": reading.error, "host": server.host, "port": server.port},
            server_id=server.id,
        )
    ]
    if reading.reachable and reading.disk_free_percent is not None:
        checks.append(
            Check(
                kind=IncidentKind.disk_low,
                subject=subject,
                ok=not reading.disk_low(thresholds),
                title=(
                    f"server {server.handle} has {reading.disk_free_percent}% of its disk free "
                    f"({reading.disk_free_gb} GB)"
                ),
                evidence={"disk_free_gb": reading.disk_free_gb, "disk_gb": reading.disk_gb},
                server_id=server.id,
            )
        )
    return checks
