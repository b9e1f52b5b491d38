"""Activities of the provisioner: bootstrap a server over SSH and record what it reported.

The SSH private key is read from the database and decrypted inside ``provision_server`` and
goes no further than the Ansible run's private directory: no activity takes or returns it, so it
never reaches a workflow history, and nothing here logs it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import heartbeating
from core.contracts.provisioner import (
    PROVISIONER_RESULT_TTL_SECONDS,
    ProvisionerResult,
    provisioner_result_key,
)
from core.crypto import Vault, VaultError
from core.enums import ServerStatus
from core.logging import get_logger
from core.settings import Settings
from db import servers
from db.engine import Database
from db.errors import NotFound
from db.tables import Server
from infra.ansible import AnsibleRunner, PlaybookRun, SshTarget

log = get_logger(__name__)

PROVISION_PLAYBOOK = "provision.yml"
# Inside the activity's start-to-close timeout (15 minutes), so Ansible stops first and says so.
PLAYBOOK_TIMEOUT_S = 12 * 60
# last_error holds Ansible's message, which may carry a long stderr: keep its head.
MAX_ERROR_CHARS = 2000
SERVER_NOT_FOUND = "ServerNotFound"


class ProvisionRequest(BaseModel):
    server_handle: str
    force_reinstall: bool = Field(
        default=False, description="Install what deploys need (python3, GNU tar, gzip) when missing"
    )


class ProvisionReport(BaseModel):
    """What one provisioning run found: the server's capacity, or why it failed."""

    server_handle: str
    success: bool
    capacity: dict[str, Any] | None = None
    os: str | None = None
    apps_root: str | None = None
    learned_known_hosts: str | None = Field(
        default=None, description="The host key accepted on first contact (a public key)"
    )
    error: str | None = None
    duration_s: float = 0.0


def server_missing(handle: str) -> ApplicationError:
    # No retry brings a removed server back: the workflow ends saying so.
    return ApplicationError(
        f"server {handle} does not exist", type=SERVER_NOT_FOUND, non_retryable=True
    )


def failure_text(run: PlaybookRun) -> str:
    """Ansible's own words for a failed run, naming the task that failed."""
    message = (run.failed_msg or "the playbook failed").strip()
    if run.failed_task:
        message = f"{PROVISION_PLAYBOOK} failed at '{run.failed_task}': {message}"
    return message[:MAX_ERROR_CHARS]


def report_of(handle: str, run: PlaybookRun) -> ProvisionReport:
    if not run.ok:
        return ProvisionReport(
            server_handle=handle,
            success=False,
            learned_known_hosts=run.learned_known_hosts,
            error=failure_text(run),
            duration_s=run.duration_s,
        )
    return ProvisionReport(
        server_handle=handle,
        success=True,
        capacity=run.data.get("capacity"),
        os=run.data.get("os"),
        apps_root=run.data.get("apps_root"),
        learned_known_hosts=run.learned_known_hosts,
        duration_s=run.duration_s,
    )


class ServerActivities:
    def __init__(self, db: Database, redis: Redis, vault: Vault, runner: AnsibleRunner) -> None:
        self.db = db
        self.redis = redis
        self.vault = vault
        self.runner = runner

    @activity.defn
    async def find_provision_result(self, request_id: str) -> ProvisionerResult | None:
        """The result already published for this request: a redelivered message finds it."""
        raw = await self.redis.get(provisioner_result_key(request_id))
        return None if raw is None else ProvisionerResult.model_validate_json(raw)

    @activity.defn
    async def mark_provisioning(self, handle: str) -> None:
        async with self.db.session() as session:
            try:
                await servers.set_status(session, handle, ServerStatus.provisioning)
            except NotFound:
                raise server_missing(handle) from None

    @activity.defn
    async def provision_server(self, request: ProvisionRequest) -> ProvisionReport:
        """Run provision.yml against the server. A failed or unreachable run is a report with
        ``success=False`` and Ansible's message, not an exception: retrying would not help."""
        target, server = await self._target(request.server_handle)
        extravars: dict[str, Any] = {"install_packages": request.force_reinstall}
        if server.apps_root:
            extravars["apps_root"] = server.apps_root
        async with heartbeating(request.server_handle):
            run = await self.runner.run_async(
                PROVISION_PLAYBOOK,
                target,
                extravars,
                timeout_s=PLAYBOOK_TIMEOUT_S,
                # A run a killed worker left behind is ended before this one starts.
                run_name=f"provision-{request.server_handle}",
            )
        report = report_of(request.server_handle, run)
        log.info(
            "server provisioned" if report.success else "server provisioning failed",
            handle=request.server_handle,
            host=target.host,
            failed_task=run.failed_task,
            duration_s=round(run.duration_s, 2),
        )
        return report

    @activity.defn
    async def record_provisioned(self, report: ProvisionReport) -> None:
        """READY with its capacity, or FAILED with the error; a host key learned on first
        contact is kept (a row that has one keeps it), so every later run checks it."""
        async with self.db.session() as session:
            try:
                await servers.set_status(
                    session,
                    report.server_handle,
                    ServerStatus.ready if report.success else ServerStatus.failed,
                    error=report.error,
                    capacity=report.capacity,
                    checked=True,
                    known_hosts=report.learned_known_hosts,
                )
            except NotFound:
                raise server_missing(report.server_handle) from None

    @activity.defn
    async def publish_provision_result(self, result: ProvisionerResult) -> None:
        await self.redis.set(
            provisioner_result_key(result.request_id),
            result.model_dump_json(),
            ex=PROVISIONER_RESULT_TTL_SECONDS,
        )

    async def _target(self, handle: str) -> tuple[SshTarget, Server]:
        return await ssh_target(self.db, self.vault, handle)


class ServerWork:
    """What the activities that work on servers over SSH hold: the settings, the database (the
    servers and their keys), Redis, the vault that decrypts the keys and the Ansible runner."""

    def __init__(
        self, settings: Settings, db: Database, redis: Redis, vault: Vault, runner: AnsibleRunner
    ) -> None:
        self.settings = settings
        self.db = db
        self.redis = redis
        self.vault = vault
        self.runner = runner


async def ssh_target(db: Database, vault: Vault, handle: str) -> tuple[SshTarget, Server]:
    """The server and what SSH needs to reach it: host, user, the decrypted key and the stored
    host key. Read in the activity that connects, and used there only."""
    async with db.session() as session:
        try:
            server = await servers.get_server(session, handle)
        except NotFound:
            raise server_missing(handle) from None
        try:
            access = await servers.ssh_access(session, vault, handle)
        except (NotFound, VaultError) as exc:
            # A deleted or damaged key, or another vault key: no retry mends it. The messages
            # name the reference, never the key.
            raise ApplicationError(
                f"cannot read the SSH key of server {handle}: {exc}",
                type="ServerKeyUnreadable",
                non_retryable=True,
            ) from None
    return SshTarget.model_validate(access.model_dump()), server
