"""The DevOps department on real parts, for tests: the API in this process, a real Temporal
worker (or one the test runs itself), a real bridge for deploy:queue and ansible:deploy:queue,
ansible-runner over SSH to a real sshd on loopback (this very machine is the server), and
projects scaffolded into the local forge."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.forge import ForgeActivities, ScaffoldRequest
from api.app import create_app
from core.contracts.deploy import ANSIBLE_DEPLOY_QUEUE, DEPLOY_QUEUE
from core.enums import ProjectTemplate, ServerStatus
from core.paths import SERVICE_TEMPLATE_DIR
from core.settings import Settings
from db.engine import Database
from db.tables import Deployment, Project, Server
from db.users import ensure_admin_key
from infra.forges.local import LocalForge
from infra.git import git
from testing.apps import database_of, edge_of, end_apps
from testing.ssh_host import SshHost
from testing.waiting import eventually
from testing.workflows import running_bridge, running_worker

SERVER = "local"


async def served(url: str) -> Any:
    """The JSON the app answers at ``url``; None when nothing answers there."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(url)
    except httpx.HTTPError:
        return None
    return response.json() if response.is_success else None


@dataclass
class DeployStack:
    settings: Settings
    db: Database
    redis: Redis
    client: Client
    api: httpx.AsyncClient
    app: FastAPI
    queue: str
    sshd: SshHost
    apps_root: Path
    home: Path

    async def project(
        self,
        name: str | None = None,
        template: ProjectTemplate = ProjectTemplate.service,
        remove: tuple[str, ...] = (),
        **files: str,
    ) -> dict[str, Any]:
        """A project whose repository ``template`` made (its backend); ``files`` are committed
        on top (path -> content) and ``remove`` removed, as an engineering task would have."""
        name = name or f"app-{random.randrange(16**6):06x}"
        body = {"name": name, "template": template.value, "modules": ["backend"]}
        created = await self.api.post("/projects", json=body)
        assert created.status_code == 201, created.text
        project = created.json()
        forge = ForgeActivities(SERVICE_TEMPLATE_DIR, LocalForge(self.settings.forge_dir))
        made = await ActivityEnvironment().run(
            forge.scaffold_repository,
            ScaffoldRequest(
                project_id=project["id"], project_name=name, modules=["backend"], template=template
            ),
        )
        if files or remove:
            bare = Path(made.repository.removeprefix("file://"))
            commit_files(bare, files, "Change the app", remove=remove)
        async with self.db.session() as session:
            row = await session.get(Project, project["id"])
            assert row is not None
            row.repository = made.repository
            row.repo_full_name = made.repo_full_name
            session.add(row)
            await session.commit()
        return dict(project)

    async def deploy(self, project: str, action: str = "create", **options: Any) -> dict[str, Any]:
        body = {"type": "deploy", "project_id": project, "deploy": {"action": action, **options}}
        created = await self.api.post("/tasks", json=body)
        assert created.status_code == 201, created.text
        return dict(created.json())

    async def run_deploy(
        self, project: str, action: str = "create", within: float = 180.0, **options: Any
    ) -> dict[str, Any]:
        """A deploy task of ``project``, started and followed to its end."""
        return await self.finished((await self.deploy(project, action, **options))["id"], within)

    async def playbook_attempts(self, task_id: str, release: str) -> list[int]:
        """The attempts of the Ansible run of ``release`` of a deploy task (a killed worker's
        attempt, then the one that finished), from its history."""
        workflow_id = f"ansible-deploy-{task_id}-{release}"
        history = await self.client.get_workflow_handle(workflow_id).fetch_history()
        return [
            event.activity_task_started_event_attributes.attempt
            for event in history.events
            if event.HasField("activity_task_started_event_attributes")
        ]

    async def releases_of(self, task_id: str) -> list[tuple[str, str]]:
        """(status, release) of each deployment row a deploy task made."""
        async with self.db.session() as session:
            query = select(Deployment).where(col(Deployment.task_id) == task_id)
            return [(str(row.status), row.release) for row in (await session.exec(query)).all()]

    async def task(self, task_id: str) -> dict[str, Any]:
        got = await self.api.get(f"/tasks/{task_id}")
        assert got.status_code == 200, got.text
        return dict(got.json())

    async def finished(self, task_id: str, within: float = 120.0) -> dict[str, Any]:
        """The task once it ended (COMPLETED, FAILED or CANCELLED)."""

        async def ended() -> dict[str, Any] | None:
            task = await self.task(task_id)
            return task if task["status"] in ("COMPLETED", "FAILED", "CANCELLED") else None

        return await eventually(ended, f"task {task_id} to end", within=within, interval=0.1)

    async def events(self, task_id: str) -> list[dict[str, Any]]:
        got = await self.api.get(f"/tasks/{task_id}/events")
        return list(got.json())


async def curl_at(
    ca: str, name: str, port: int, path: str = "/", *options: str
) -> subprocess.CompletedProcess[str]:
    """``https://name:port/path`` asked at this machine, trusting only the edge's CA ``ca``, as
    curl's ``--resolve`` stands in for DNS; ``options``: more of curl's (a method, a body)."""
    return await asyncio.to_thread(
        subprocess.run,
        ["curl", "-sS", "--max-time", "10", "--cacert", ca, "--resolve",
         f"{name}:{port}:127.0.0.1", *options, f"https://{name}:{port}{path}"],
        capture_output=True, text=True,
    )  # fmt: skip


async def kept_by_orchestrator(
    stack: DeployStack, redis: Redis, workflow_ids: list[str]
) -> dict[str, str]:
    """What the orchestrator keeps, by place: these runs' histories, its database (dumped; the
    engine is disposed of first), every Redis stream and string, every file of its home. What
    a secret scan looks through."""
    places: dict[str, str] = {}
    for workflow_id in workflow_ids:
        history = await stack.client.get_workflow_handle(workflow_id).fetch_history()
        places[f"history {workflow_id}"] = history.to_json()
    await stack.db.dispose()
    database = Path(str(stack.db.url).removeprefix("sqlite+aiosqlite:///"))
    with contextlib.closing(sqlite3.connect(database)) as conn:
        places["database"] = "\n".join(conn.iterdump())
    async for key in redis.scan_iter():
        kind = await redis.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "stream":
            places[f"stream {key!r}"] = repr(await redis.xrange(key))
        elif kind == "string":
            places[f"key {key!r}"] = repr(await redis.get(key))
    for path in (p for p in stack.home.rglob("*") if p.is_file() and not p.is_symlink()):
        places[f"file {path}"] = path.read_bytes().decode(errors="replace")
    return places


class AppAtName:
    """An app at its HTTPS name on the stack's server, asked as a person with the server's CA
    would (``ca`` holds it once the first deploy learned it): the `app` template's items."""

    def __init__(self, stack: DeployStack, name: str) -> None:
        self.name = name
        self.port = edge_of(stack.apps_root).https_port
        self.ca = stack.home / "edge-ca.pem"

    async def learn_ca(self, stack: DeployStack) -> None:
        self.ca.write_text((await stack.api.get(f"/servers/{SERVER}")).json()["edge_ca"])

    async def items(self) -> list[dict[str, Any]]:
        answer = await curl_at(str(self.ca), self.name, self.port, "/items", "--fail")
        assert answer.returncode == 0, answer.stderr
        return list(json.loads(answer.stdout))

    async def add(self, name: str) -> dict[str, Any]:
        body = json.dumps({"name": name, "description": "kept across releases"})
        answer = await curl_at(
            str(self.ca), self.name, self.port, "/items", "--fail",
            "-X", "POST", "-H", "Content-Type: application/json", "-d", body,
        )  # fmt: skip
        assert answer.returncode == 0, answer.stderr
        return dict(json.loads(answer.stdout))


async def give_base_domain(stack: DeployStack, base_domain: str) -> None:
    """The stack's server gets ``base_domain``: its apps go live at https://<project>.<it>."""
    async with stack.db.session() as session:
        server = (await session.exec(select(Server).where(col(Server.handle) == SERVER))).one()
        server.base_domain = base_domain
        session.add(server)
        await session.commit()


def commit_files(
    bare: Path,
    files: dict[str, str],
    message: str,
    branch: str = "main",
    remove: tuple[str, ...] = (),
) -> str:
    """Commit ``files`` (and the removal of ``remove``) onto ``branch`` of the bare repository;
    returns the new commit."""
    work = Path(tempfile.mkdtemp(prefix="commit-"))
    try:
        git("clone", "--quiet", "--branch", "main", str(bare), str(work))
        if branch != "main":
            git("checkout", "--quiet", "-B", branch, cwd=work)
        for path, content in files.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_text(content)
        for path in remove:
            (work / path).unlink()
        git("add", "--all", cwd=work)
        git("commit", "--quiet", "-m", message, cwd=work)
        git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", cwd=work)
        return git("rev-parse", "HEAD", cwd=work).stdout.strip()
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.asynccontextmanager
async def deploy_stack_on(
    db: Database,
    redis: Redis,
    client: Client,
    sshd: SshHost,
    home: Path,
    *,
    in_process_worker: bool = True,
    **overrides: Any,
) -> AsyncIterator[DeployStack]:
    """The API, a bridge, a READY server and (unless the test runs its own) a worker;
    ``overrides`` change the stack's settings."""
    # Ports of their own: apps of another test (or a crashed run) must not answer for ours.
    first = random.randrange(20000, 29000, 50)
    settings = Settings(
        **{
            "home": home,
            "deploy_ports": f"{first}-{first + 49}",
            "deploy_health_timeout_s": 15,
            "temporal_task_queue": f"deploy-{uuid.uuid4().hex[:12]}",
            **overrides,
        }
    )
    apps_root = Path(tempfile.mkdtemp(prefix="o-apps-"))
    application = create_app(settings, database=db, redis=redis, temporal=client)
    key = await ensure_admin_key(db, home / "api_key")
    try:
        async with (
            application.router.lifespan_context(application),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(application),
                base_url="http://api",
                headers={"Authorization": f"Bearer {key}"},
            ) as api,
            _worker(client, db, redis, settings, in_process_worker),
            running_bridge(
                redis, client, settings.temporal_task_queue, (DEPLOY_QUEUE, ANSIBLE_DEPLOY_QUEUE)
            ),
        ):
            stack = DeployStack(
                settings=settings,
                db=db,
                redis=redis,
                client=client,
                api=api,
                app=application,
                queue=settings.temporal_task_queue,
                sshd=sshd,
                apps_root=apps_root,
                home=home,
            )
            await add_ready_server(stack)
            yield stack
    finally:
        end_apps(apps_root)
        shutil.rmtree(apps_root, ignore_errors=True)


@contextlib.asynccontextmanager
async def _worker(
    client: Client, db: Database, redis: Redis, settings: Settings, wanted: bool
) -> AsyncIterator[None]:
    if not wanted:
        yield
        return
    async with running_worker(
        client, db, redis, settings.home, settings=settings, task_queue=settings.temporal_task_queue
    ):
        yield


async def add_ready_server(stack: DeployStack, handle: str = SERVER) -> dict[str, Any]:
    """This machine's sshd as a READY server, as provisioning leaves it (provisioning has tests
    of its own)."""
    body = {
        "handle": handle,
        "host": stack.sshd.host,
        "port": stack.sshd.port,
        "ssh_user": stack.sshd.user,
        "private_key": stack.sshd.private_key,
        "apps_root": str(stack.apps_root),
        "edge": edge_of(stack.apps_root).model_dump(),
        "database": database_of(stack.apps_root).model_dump(),
    }
    added = await stack.api.post("/servers", json=body)
    assert added.status_code == 201, added.text
    async with stack.db.session() as session:
        server = (await session.exec(select(Server).where(col(Server.handle) == handle))).one()
        server.status = ServerStatus.ready
        server.capacity = {"memory_mb": 4096, "cpus": 2, "disk_free_gb": 10}
        server.known_hosts = stack.sshd.known_hosts
        session.add(server)
        await session.commit()
    return dict(added.json())
