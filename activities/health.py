"""Activities of the scheduled checks: read each server over SSH, record what was found, open
and resolve incidents, tell the chats (workflows/server_health.py).

The SSH key is read and decrypted inside ``check_server_health`` and goes no further than its
Ansible run's private directory, as in provisioning (activities/servers.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Generic, TypeVar

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from activities import each_at_most, heartbeating
from activities.servers import ServerWork, ssh_target
from core.contracts.base import utcnow
from core.contracts.chat import CHATS_KEY
from core.enums import CHECKED_SERVER_STATUSES, IncidentKind, ServerStatus
from core.faults import crash_point
from core.logging import get_logger
from core.settings import Settings
from db import deployments, incidents, outbox, secrets, servers, users
from db.engine import Database
from db.incidents import Check, CheckRecorded
from db.tables import Deployment, Project, Server
from infra.ansible import mask_secrets
from infra.env_analyzer import AppSpec
from infra.health import Certificate, check_health, served_certificate
from infra.server_probe import AppReading, ServerReading, Thresholds, inspect_app, probe_server

log = get_logger(__name__)

Checked = TypeVar("Checked", bound=BaseModel)


class Tick(BaseModel):
    """A scheduled check's input: nothing, the worker's settings say what and how."""


class CheckReport(BaseModel, Generic[Checked]):
    """What one check (or one tick of them) found, subject by subject."""

    checked: list[Checked] = Field(default_factory=list)
    errors: dict[str, str] = Field(
        default_factory=dict, description="Subjects whose check failed in this tick, and why"
    )


class HealthPlan(BaseModel):
    """What one tick checks, and how many checks run at once."""

    subjects: list[str] = Field(
        default_factory=list, description="Server handles, or the ids of serving deployments"
    )
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


class AppBatchInput(BaseModel):
    deployment_ids: list[str]
    tick: str = Field(description="The run of the tick: a retry within it counts once")


class AppCheckOutput(BaseModel):
    deployment_id: str
    project: str | None = None
    up: bool | None = Field(default=None, description="None: not checked (no longer serving)")
    problem: str | None = None
    restarted: bool = Field(default=False, description="Started again by this check")
    failures: int = 0
    certificate_days_left: float | None = None
    opened: list[int] = Field(default_factory=list)
    resolved: list[int] = Field(default_factory=list)


class HealthActivities(ServerWork):
    @activity.defn
    async def plan_server_health(self) -> HealthPlan:
        """The provisioned servers, whatever their last check said."""
        async with self.db.session() as session:
            handles = await servers.handles_with_status(session, CHECKED_SERVER_STATUSES)
        return HealthPlan(subjects=handles, concurrency=self.settings.health_check_concurrency)

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
        desk = IncidentDesk(self.settings, self.db, self.redis)
        async with self.db.session() as session:
            await servers.record_health(
                session,
                server.id,
                status,
                error=reading.error if not reading.reachable else "; ".join(problems) or None,
                health=reading.model_dump(exclude={"reachable", "error"}),
            )
            recorded = await desk.record(
                session, _checks(server, reading, thresholds), request.tick, await desk.admins()
            )
        await desk.publish(recorded)
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

    @activity.defn
    async def plan_app_health(self) -> HealthPlan:
        """Every project's live release on a server."""
        async with self.db.session() as session:
            serving = await deployments.all_serving(session)
        return HealthPlan(subjects=serving, concurrency=self.settings.health_check_concurrency)

    @activity.defn
    async def check_app_health(self, request: AppBatchInput) -> CheckReport[AppCheckOutput]:
        """Check a batch of live releases, ``health_check_concurrency`` at a time; one whose
        check fails is named in ``errors``, the others go on."""
        desk = IncidentDesk(self.settings, self.db, self.redis)
        checked, errors = await each_at_most(
            self.settings.health_check_concurrency,
            request.deployment_ids,
            lambda deployment_id: self._check_app(deployment_id, request.tick, desk),
            "apps",
        )
        checked.sort(key=lambda one: one.deployment_id)
        return CheckReport[AppCheckOutput](checked=checked, errors=errors)

    async def _check_app(self, deployment_id: str, tick: str, desk: IncidentDesk) -> AppCheckOutput:
        """Ask the app from here (its health URL; an app without a port: its process on the
        server). Found down for the first time, it is started again once and asked again. Then
        record what it means for its incidents (down, certificate running out), telling the
        project's chat."""
        async with self.db.session() as session:
            found = await deployments.live_release(session, deployment_id)
            if found is None:
                return AppCheckOutput(deployment_id=deployment_id)
            deployment, project, server = found
            app = ServingApp(deployment, project, server)
            failed_before = await incidents.failures_before(
                session, IncidentKind.app_down, app.subject, tick
            )
        problem, reading = await self._look(app)
        restarted = False
        if problem is not None and failed_before == 0 and self.settings.app_restart_before_incident:
            problem, reading, restarted = await self._restart(app)
        certificate = await served_certificate(
            app.url, connect_to=server.host, timeout_s=self.settings.app_health_timeout_s
        )
        checks = app.checks(problem, reading, certificate, self.settings)
        chats = await desk.chats_of(project)
        async with self.db.session() as session:
            recorded = await desk.record(session, checks, tick, chats)
        await desk.publish(recorded)
        now = utcnow()
        return AppCheckOutput(
            deployment_id=deployment.id,
            project=project.name,
            up=problem is None,
            problem=problem,
            restarted=restarted,
            failures=recorded[0].failures,
            certificate_days_left=None if certificate is None else certificate.days_left(now),
            opened=[r.opened for r in recorded if r.opened is not None],
            resolved=[r.resolved for r in recorded if r.resolved is not None],
        )

    async def _look(
        self, app: ServingApp, *, after_restart: bool = False
    ) -> tuple[str | None, AppReading | None]:
        """What is wrong with the app (None: nothing), and, when something is or it has no
        URL, what its server says of it (its process, its last log lines). Just started again,
        it has ``app_restart_wait_s`` to answer."""
        if not app.spec.serves_port:
            reading = await self._inspect(app)
            return app.liveness_problem(reading), reading
        within = self.settings.app_restart_wait_s if after_restart else None
        problem = await check_health(
            app.health_url,
            within or self.settings.app_health_timeout_s,
            connect_to=app.server.host if app.health_url.startswith("https://") else None,
            ca_pem=app.server.edge_ca,
            any_status=app.spec.health_any_status,
        )
        if problem is None:
            return None, None
        said = " after a restart" if after_restart else ""
        return f"{app.health_url} does not answer{said}: {problem}", await self._inspect(app)

    async def _restart(self, app: ServingApp) -> tuple[str | None, AppReading | None, bool]:
        """Start the serving release again, then ask it again."""
        started = await self._inspect(app, restart=True)
        if not started.restarted:
            why = started.error or "appctl start failed"
            return f"it could not be started again: {why}", started, False
        log.info("app started again", project=app.project.name, release=started.release)
        problem, reading = await self._look(app, after_restart=True)
        return problem, reading, True

    async def _inspect(self, app: ServingApp, *, restart: bool = False) -> AppReading:
        """Look at the app on its server over SSH (``restart``: start it again first)."""
        target, _ = await ssh_target(self.db, self.vault, app.server.handle)
        reading = await inspect_app(
            self.runner, target, app.server.apps_root, app.project.name, restart=restart
        )
        # Its own secrets may be in what it printed: never in an incident or a chat.
        async with self.db.session() as session:
            values = await secrets.project_env(session, self.vault, app.project.id)
        reading.log_tail = mask_secrets(reading.log_tail, values.values())
        return reading


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


class IncidentDesk:
    """Records what checks found as incidents (db/incidents.py) and tells the chats: the
    scheduled checks' and the deploys' one way to do it."""

    def __init__(self, settings: Settings, db: Database, redis: Redis) -> None:
        self.settings = settings
        self.db = db
        self.redis = redis
        self._admins: list[int] | None = None

    async def admins(self) -> list[int]:
        """The admins' chats (the settings' Telegram admins and admin users with a Telegram
        id), looked up once; each added to the chats the bot reads."""
        if self._admins is None:
            async with self.db.session() as session:
                found = await users.admin_telegram_ids(session)
            self._admins = list(dict.fromkeys([*self.settings.telegram_admins, *found]))
            if self._admins:
                await self.redis.sadd(CHATS_KEY, *[str(chat) for chat in self._admins])
        return self._admins

    async def chats_of(self, project: Project) -> list[int]:
        """Who hears of a project's incidents: the chat whose PO session made it, else the
        admins."""
        if project.chat_id:
            await self.redis.sadd(CHATS_KEY, str(project.chat_id))
            return [project.chat_id]
        return await self.admins()

    async def record(
        self,
        session: AsyncSession,
        checks: list[Check],
        tick: str,
        chats: list[int],
        threshold: int | None = None,
    ) -> list[CheckRecorded]:
        """Each check counted (once per ``tick``), its incident opened or resolved, its notes
        enqueued; what else the session holds is committed with them. A Conflict (another
        writer opened the same incident meanwhile) fails the attempt: its retry finds it open."""
        recorded = [
            await incidents.record_check(
                session,
                check,
                tick=tick,
                threshold=threshold or self.settings.incident_after_failures,
                chats=chats,
            )
            for check in checks
        ]
        await session.commit()
        return recorded

    async def publish(self, recorded: list[CheckRecorded]) -> None:
        """Send the notes now; if Redis is away, the outbox's relay sends them later."""
        # Killed here, the retry counts nothing twice (the tick is kept with the streak) and
        # the notes already committed go out through the outbox's relay.
        crash_point("health.after_record")
        notes = [note for r in recorded for note in r.notes]
        if not notes:
            return
        try:
            await outbox.publish(self.db, self.redis, notes)
        except Exception as exc:
            log.warning("outbox publish deferred", error=str(exc))


class ServingApp:
    """A live release with its project and server, and what its checks mean."""

    def __init__(self, deployment: Deployment, project: Project, server: Server) -> None:
        self.deployment = deployment
        self.project = project
        self.server = server
        self.spec = AppSpec.model_validate((deployment.details or {}).get("spec") or {})
        self.url = deployment.url or ""
        self.health_url = self.url.rstrip("/") + self.spec.health_path

    @property
    def subject(self) -> str:
        return f"app:{self.project.name}"

    def liveness_problem(self, reading: AppReading) -> str | None:
        if not reading.reachable:
            return f"its server did not answer: {reading.error}"
        if not reading.found:
            return "it is not on its server any more"
        if not reading.supervised:
            return f"release {reading.release} is not running on {self.server.handle}"
        if not reading.running:
            return f"release {reading.release} keeps exiting ({reading.exits} times)"
        return None

    def checks(
        self,
        problem: str | None,
        reading: AppReading | None,
        certificate: Certificate | None,
        settings: Settings,
    ) -> list[Check]:
        evidence: dict[str, object] = {"error": problem, "url": self.url or None}
        if reading is not None:
            evidence.update(
                release=reading.release, log_tail=reading.log_tail, restarted=reading.restarted
            )
        found = [
            Check(
                kind=IncidentKind.app_down,
                subject=self.subject,
                ok=problem is None,
                title=f"app {self.project.name} is down on {self.server.handle}",
                evidence=evidence,
                server_id=self.server.id,
                project_id=self.project.id,
            )
        ]
        if certificate is not None:
            now = utcnow()
            found.append(
                Check(
                    kind=IncidentKind.certificate_expiring,
                    subject=self.subject,
                    ok=not certificate.expiring(
                        now, timedelta(days=settings.certificate_expiry_days)
                    ),
                    title=(
                        f"the TLS certificate of {self.url} runs out in "
                        f"{certificate.days_left(now)} days "
                        f"({certificate.not_after:%Y-%m-%d %H:%M} UTC)"
                    ),
                    evidence={"not_after": certificate.not_after.isoformat(), "url": self.url},
                    server_id=self.server.id,
                    project_id=self.project.id,
                )
            )
        return found
