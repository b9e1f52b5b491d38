"""Releases on servers, through Ansible: what ``AnsibleDeployWorkflow`` and stop/undeploy run.

The release travels as an archive made here (``git archive`` of one commit, plus the
``requirements.txt`` its uv lockfile pins), so a server needs no access to the forge and holds no
credential. Secrets are decrypted only in ``deploy_release``,
handed to the runner as secret variables (a 0600 file, masked in its output) and written by the
playbook into the release's ``.env``; they appear in no result, event, log or history.
"""

from __future__ import annotations

import math
import re
import secrets as random_secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import heartbeating, infra_failures, run_blocking
from activities.servers import ServerWork, ssh_target
from core.contracts.deploy import (
    DEPLOY_RESULT_TTL_SECONDS,
    PROJECT_SECRETS_PREFIX,
    AnsibleDeployMessage,
    AnsibleDeployResult,
    DatabaseSettings,
    EdgeSettings,
    deploy_result_key,
)
from core.logging import get_logger
from db import domains, secrets, servers
from db.tables import Server
from infra.ansible import PlaybookRun, RunnerEvent, SshTarget
from infra.forges import make_forge
from infra.git import archive_commit
from infra.release_archives import archive_vars, export_locked_requirements

log = get_logger("activities.releases")

PORT_BUSY = "port {port} is in use on the server by another process"
DEFAULT_COMMIT = "refs/heads/main"
PLAYBOOK_TIMEOUT_S = 900
# Between the playbook's health checks: an app is often up a moment after its first check.
HEALTH_DELAY_S = 0.1


class StopAppInput(BaseModel):
    server_handle: str
    app_name: str
    remove: bool = False  # undeploy: the app's directory goes too
    drop_data: bool = False  # undeploy: its database and role too


class StopAppResult(BaseModel):
    server_handle: str
    app_found: bool
    data_dropped: bool = False


def _seconds_by_step(steps: Any) -> dict[str, float]:
    """The release step's own timings, as the playbook reported them (numbers, by step)."""
    if not isinstance(steps, dict):
        return {}
    return {str(name): float(seconds) for name, seconds in steps.items()}


def _fail(message: str, kind: str = "ReleaseFailed") -> ApplicationError:
    return ApplicationError(message, type=kind, non_retryable=True)


def _apps_root(server: Server) -> dict[str, str]:
    """The server's own apps directory, when it has one (else the playbooks' default)."""
    return {"apps_root": server.apps_root} if server.apps_root else {}


def deployed_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def app_host_name(project_name: str, base_domain: str) -> str:
    """The app's name under the server's base domain: its project's name as a DNS label."""
    label = re.sub(r"[^a-z0-9-]+", "-", project_name.lower()).strip("-")[:63] or "app"
    return f"{label}.{base_domain}"


def edge_of(server: Server) -> EdgeSettings:
    """The server's edge as its row says (none stored: the defaults)."""
    return EdgeSettings.model_validate(server.edge or {})


def database_of(server: Server) -> DatabaseSettings:
    """The server's PostgreSQL for apps as its row says (none stored: the defaults)."""
    return DatabaseSettings.model_validate(server.database or {})


def database_role(project_name: str) -> str:
    """The role and database an app gets on its server's PostgreSQL: ``app_<name>`` (prefixed,
    so no project is ever named like the cluster's own roles)."""
    name = re.sub(r"[^a-z0-9_]", "_", project_name.lower())
    return f"app_{name}"[:63]


def database_url(project_name: str, settings: DatabaseSettings, current: str | None) -> str | None:
    """The URL of the project's own database on a server with ``settings``; ``current`` (the
    project's stored one) keeps its password. None: ``current`` names a database the project
    was given by a person (another host or role), which the deploy leaves alone."""
    role = database_role(project_name)
    password = None
    if current:
        parts = urlsplit(current)
        if parts.hostname != "127.0.0.1" or parts.username != role:
            return None
        password = parts.password
    password = password or random_secrets.token_urlsafe(24)
    return f"postgresql://{role}:{password}@127.0.0.1:{settings.port}/{role}"


def named_url(name: str, edge: EdgeSettings) -> str:
    return f"https://{name}/" if edge.https_port == 443 else f"https://{name}:{edge.https_port}/"


class ReleaseActivities(ServerWork):
    @activity.defn
    async def deploy_release(self, message: AnsibleDeployMessage) -> AnsibleDeployResult:
        """Run deploy.yml for one release; a failed playbook is a result, not an error."""
        handle = message.server_handle or await self._handle_of(message.server_ip)
        target, server = await ssh_target(self.db, self.vault, handle)
        release = message.release or message.request_id
        archive_dir = Path(tempfile.mkdtemp(prefix="release-", dir=self._archives()))
        try:
            archive = archive_dir / f"{release}.tar.gz"
            commit = await run_blocking(self._archive, message, archive)
            names = await self._names(message, server)
            managed_database = await self._provide_generated(message, server)
            run = await self._run(
                "deploy.yml",
                target,
                self._extravars(message, server, release, archive, names, managed_database),
                {"secret_env": await self._secret_env(message.secrets_ref)},
                run_name=message.request_id,
            )
        finally:
            shutil.rmtree(archive_dir, ignore_errors=True)
        result = self._result(message, server, release, commit, run, names)
        if result.edge_ca:
            async with self.db.session() as session:
                await servers.learn_edge_ca(session, server.id, result.edge_ca)
        return result

    @activity.defn
    async def publish_deploy_result(self, result: AnsibleDeployResult) -> None:
        """``deploy:result:{request_id}`` for an hour, as the contract says."""
        await self.redis.set(
            deploy_result_key(result.request_id),
            result.model_dump_json(),
            ex=DEPLOY_RESULT_TTL_SECONDS,
        )

    @activity.defn
    async def stop_app(self, request: StopAppInput) -> StopAppResult:
        """Stop the app's releases on one server (undeploy: and remove them)."""
        target, server = await ssh_target(self.db, self.vault, request.server_handle)
        playbook = "undeploy.yml" if request.remove else "stop.yml"
        extravars: dict[str, Any] = {"app_name": request.app_name, **_apps_root(server)}
        if request.remove:
            extravars["drop_data"] = request.drop_data
        run = await self._run(playbook, target, extravars)
        if not run.ok:
            # Retried: an unreachable server may come back; the message says what failed.
            raise ApplicationError(
                f"{playbook} failed on {server.handle}: {run.failed_msg}", type="PlaybookFailed"
            )
        return StopAppResult(
            server_handle=server.handle,
            app_found=bool(run.data.get("app_found", True)),
            data_dropped=bool(run.data.get("data_dropped", False)),
        )

    # --- private ---------------------------------------------------------------------------

    async def _run(
        self,
        playbook: str,
        target: SshTarget,
        extravars: dict[str, Any],
        secret_vars: dict[str, Any] | None = None,
        run_name: str | None = None,
    ) -> PlaybookRun:
        def on_event(event: RunnerEvent) -> None:
            if event.task:  # the task's name shows in the Web UI as the heartbeat's details
                activity.heartbeat(f"{playbook}: {event.task}")

        async with heartbeating(playbook):
            return await self.runner.run_async(
                playbook,
                target,
                extravars,
                secret_vars,
                on_event,
                timeout_s=PLAYBOOK_TIMEOUT_S,
                run_name=run_name,
            )

    async def _handle_of(self, host: str) -> str:
        """The server a message names by its address only (the contract's ``server_ip``)."""
        async with self.db.session() as session:
            found = await servers.find_by_host(session, host)
        if len(found) != 1:
            many = "several servers have" if found else "no server has"
            raise _fail(
                f"{many} the address {host}: name the server by its handle", "ServerNotFound"
            )
        return found[0].handle

    async def _provide_generated(self, message: AnsibleDeployMessage, server: Server) -> bool:
        """The values the deploy makes for the project, once, as project secrets (encrypted,
        never in a message or history): its generated secrets, and the URL of its own database
        on this server (the password kept if it moves). True when the server is to create that
        database; False when it has none or a person gave it another one."""
        async with self.db.session() as session:
            stored = await secrets.project_env(session, self.vault, message.project_id)
            made: dict[str, str] = {
                name: random_secrets.token_urlsafe(length)[:length]
                for name, length in message.generated_secrets.items()
                if name not in stored
            }
            url = None
            if message.database_env:
                current = stored.get(message.database_env)
                url = database_url(message.project_name, database_of(server), current)
                if url is not None and url != current:
                    made[message.database_env] = url
            for name, value in made.items():
                await secrets.stage_secret(session, self.vault, message.project_id, name, value)
            await session.commit()
        if made:
            log.info("secrets generated", project_id=message.project_id, names=sorted(made))
        return url is not None

    async def _secret_env(self, secrets_ref: str | None) -> dict[str, str]:
        """The project's stored secrets by name, decrypted (only here, only for the playbook)."""
        if not secrets_ref:
            return {}
        if not secrets_ref.startswith(PROJECT_SECRETS_PREFIX):
            raise _fail(f"secrets_ref must be {PROJECT_SECRETS_PREFIX}<project id>")
        project_id = secrets_ref.removeprefix(PROJECT_SECRETS_PREFIX)
        async with self.db.session() as session:
            return await secrets.project_env(session, self.vault, project_id)

    def _archive(self, message: AnsibleDeployMessage, path: Path) -> str:
        """``git archive`` of the release's commit at ``path``, with the requirements its uv
        lockfile pins; returns the commit."""
        repository = message.repository or make_forge(self.settings).clone_url(
            message.repo_full_name
        )
        wanted = message.commit_sha or DEFAULT_COMMIT
        with infra_failures():
            commit = archive_commit(repository, wanted, path, name=message.repo_full_name)
            export_locked_requirements(path)
            return commit

    def _archives(self) -> Path:
        directory = self.runner.work_root / "archives"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return directory

    async def _names(self, message: AnsibleDeployMessage, server: Server) -> list[str]:
        """The app's HTTPS names: <project>.<base domain> first, then its custom domains."""
        async with self.db.session() as session:
            custom = await domains.names_of(session, message.project_id)
        base = (
            [app_host_name(message.project_name, server.base_domain)] if server.base_domain else []
        )
        return base + [name for name in custom if name not in base]

    def _extravars(
        self,
        message: AnsibleDeployMessage,
        server: Server,
        release: str,
        archive: Path,
        names: list[str],
        managed_database: bool,
    ) -> dict[str, Any]:
        retries = max(1, math.ceil(self.settings.deploy_health_timeout_s / HEALTH_DELAY_S))
        return {
            "app_name": message.project_name,
            "release": release,
            **archive_vars(archive),
            # An app that serves no port gets none: the project's port on the server is only its
            # place there.
            "app_port": message.port if message.serves_port else 0,
            "bot_token_env": (message.bot_token_env or "") if not message.serves_port else "",
            "start_command": message.start_command or "",
            "port_env": message.port_env or "PORT",
            "health_path": message.health_path or "/",
            "health_any_status": message.health_any_status,
            # The edge in front of it is the app's way in: it listens on loopback only.
            "env": {"HOST": "127.0.0.1", **message.env},
            "names": names,
            "edge": edge_of(server).playbook_vars(),
            # The server makes the role and database the URL in this variable names.
            "database": {"env": message.database_env, "port": database_of(server).port}
            if managed_database
            else {},
            "release_command": message.release_command or "",
            # A container: built on the server from the release's files (its Dockerfile), run by
            # the server's podman; else a process.
            "container": message.container.model_dump() if message.container else {},
            "health_retries": retries,
            "health_delay": HEALTH_DELAY_S,
            **_apps_root(server),
        }

    @staticmethod
    def _url(message: AnsibleDeployMessage, server: Server, names: list[str]) -> str:
        """The URL a person uses: the app's first HTTPS name, else its port on the server."""
        if names:
            return named_url(names[0], edge_of(server))
        return deployed_url(server.host, message.port)

    def _result(
        self,
        message: AnsibleDeployMessage,
        server: Server,
        release: str,
        commit: str,
        run: PlaybookRun,
        names: list[str],
    ) -> AnsibleDeployResult:
        common: dict[str, Any] = {
            "request_id": message.request_id,
            "release": release,
            "server_ip": server.host,
            "port": message.port,
            "commit_sha": commit,
            "playbook_s": round(run.duration_s, 3),
        }
        if run.ok:
            return AnsibleDeployResult(
                **common,
                success=True,
                deployed_url=self._url(message, server, names) if message.serves_port else None,
                previous_release=run.data.get("previous_release") or None,
                bot=run.data.get("bot") or None,
                database=run.data.get("database") or None,
                release_steps=_seconds_by_step(run.data.get("release_steps")),
                # Only what a client needs: names on a server whose edge is its own CA.
                edge_ca=(run.data.get("edge_ca") or None)
                if names and edge_of(server).tls == "internal"
                else None,
            )
        error = run.failed_msg or f"the playbook failed (rc {run.rc})"
        log.warning("release failed", release=release, server=server.handle, task=run.failed_task)
        return AnsibleDeployResult(
            **common,
            success=False,
            error=error,
            failed_task=run.failed_task,
            port_busy=error.startswith(PORT_BUSY.format(port=message.port)),
        )
