"""Record the workflow histories the replay tests check new workflow code against.

    .venv/bin/python -m tests.workflows.histories.record [NAME...]

Runs the real worker against a throwaway dev server, Redis and SQLite database (and podman for
the paths that run Workers), drives each path of the workflows once, and writes each run's
history as JSON next to this file. Paths of this machine are replaced in the recorded payloads
and stack traces, so the files can be committed.

Re-record only when a change is meant to be incompatible AND no run of the old code can still be
open anywhere; otherwise keep the old files and guard the change with ``workflow.patched``.
Name the paths to record (``record engineering_developed``); with no name it records them all
but ``KEPT``, the recordings older code made, whose patch markers prove that runs from before a
``workflow.deprecate_patch`` still replay (name one to replace it, losing that proof).
No recording may hold a secret or a path of this machine: each file is checked for the
recording's SSH private keys, its project secret (an obviously fake value) and the machine's
directories before it is written.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import docker
from redis.asyncio import Redis
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import CancelledError
from temporalio.testing import WorkflowEnvironment

from bridges.routes import start_provision
from core.contracts.events import TASK_QUESTION, TASK_RESPOND, HumanAnswer
from core.contracts.workflows import (
    PO_RESPOND,
    WORKERS_POOL,
    POMessage,
    POResponse,
    POSessionInput,
    ScaffoldInput,
)
from core.crypto import Vault
from core.ids import (
    ansible_deploy_workflow_id,
    po_session_workflow_id,
    provision_workflow_id,
    scaffold_workflow_id,
)
from core.settings import Settings
from core.temporal import SEARCH_ATTRIBUTES, search_attributes
from db import servers as server_service
from db.engine import Database
from db.migrate import upgrade_async
from db.tables import Project
from infra.containers import ContainerRuntime
from testing import servers
from testing.deploy import DeployStack, deploy_stack_on
from testing.images import image_builder
from testing.ssh_host import ssh_host
from testing.turns import ask_turn, pool_state
from testing.waiting import eventually
from testing.workflows import (
    make_project,
    make_scripted_task,
    make_task,
    running_worker,
    small_runtime,
    start_engineering,
)
from tests.e2e.deploy.test_lifecycle import BROKEN_MAIN
from tests.e2e.deploy.test_secrets import manifest
from tests.workflows.test_engineering_e2e import SCRIPT
from workflows.po_session import send_po_message
from workflows.scaffold import ScaffoldWorkflow

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
IDENTITY = "history-recorder"


async def record(out_dir: Path, names: set[str]) -> list[Path]:
    with (
        tempfile.TemporaryDirectory(prefix="histories-") as tmp,
        servers.redis_server() as url,
        contextlib.ExitStack() as services,
    ):
        home = Path(tmp)
        # Only the development paths run Workers: the container service only for them.
        docker_host = ""
        if names & DEVELOPMENT_PATHS:
            podman = servers.podman_service(servers.test_images_root() / "podman")
            docker_host = services.enter_context(podman)
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(servers.TEMPORAL_BIN),
            data_converter=pydantic_data_converter,
            search_attributes=SEARCH_ATTRIBUTES,
            dev_server_extra_args=servers.TEMPORAL_SQLITE_PRAGMAS,
        )
        database_url = f"sqlite+aiosqlite:///{home / 'orchestrator.db'}"
        await upgrade_async(database_url)
        db, redis = Database(database_url), Redis.from_url(url)
        try:
            client = await Client.connect(
                env.client.service_client.config.target_host,
                data_converter=pydantic_data_converter,
                identity=IDENTITY,
            )
            histories = {}
            secrets: list[str] = []  # what no recording may contain
            if names - DEVELOPMENT_PATHS - PROVISION_PATHS - DEPLOY_PATHS:
                histories.update(await _run_paths(client, db, redis, home))
            # Deploys first: the server provisioning adds stays READY once its sshd is gone,
            # and a deploy would choose it.
            if names & DEPLOY_PATHS:
                histories.update(await _run_deploy_paths(client, db, redis, home, secrets))
            if names & PROVISION_PATHS:
                histories.update(await _run_provision_paths(client, db, redis, home, secrets))
            if names & DEVELOPMENT_PATHS:
                histories.update(await _run_development_paths(client, db, redis, home, docker_host))
            cleaner = _Cleaner(home)
            written = []
            for name, handle in histories.items():
                if name not in names:
                    continue
                history = await handle.fetch_history()
                path = out_dir / f"{name}.json"
                data = cleaner.clean(history.to_json_dict())
                text = json.dumps(data, indent=1, sort_keys=True) + "\n"
                _assert_no_secret(name, data, text, secrets)
                _assert_no_machine_path(name, data, text)
                path.write_text(text)
                written.append(path)
            return written
        finally:
            await redis.aclose()
            await db.dispose()
            await env.shutdown()


async def _run_paths(
    client: Client, db: Database, redis: Redis, home: Path
) -> dict[str, WorkflowHandle[Any, Any]]:
    runs: dict[str, WorkflowHandle[Any, Any]] = {}
    options = {"identity": IDENTITY}

    # A new project: the engineering run and its scaffold child; then a second task on it, whose
    # project already has its repository. No coding agent is configured (this process has no
    # model key and the tasks choose none): both end FAILED after the scaffold stage, saying so.
    project = await make_project(db, name="demo")
    async with running_worker(client, db, redis, home, **options) as queue:
        first = await start_engineering(client, await make_task(db, redis, project), queue)
        await _fails_for_want_of_an_agent(first)
        runs["engineering"] = first
        runs["scaffold"] = client.get_workflow_handle(scaffold_workflow_id(project.id))
        second = await start_engineering(client, await make_task(db, redis, project), queue)
        await _fails_for_want_of_an_agent(second)
        runs["engineering_existing_repository"] = second

    # A scaffold that fails (no template): the task fails, and so does the child.
    broken = await make_project(db, name="broken")
    missing = home / "no-template"
    async with running_worker(client, db, redis, home, template_dir=missing, **options) as queue:
        failing = await start_engineering(client, await make_task(db, redis, broken), queue)
        try:
            await failing.result()
        except WorkflowFailureError:
            pass
        runs["engineering_failed"] = failing
        runs["scaffold_failed"] = client.get_workflow_handle(scaffold_workflow_id(broken.id))

    # Cancelled while waiting for a scaffold run that another starter began.
    waiting = await make_project(db, name="waiting")
    blocker = await client.start_workflow(
        ScaffoldWorkflow.run,
        ScaffoldInput(project_id=waiting.id),
        id=scaffold_workflow_id(waiting.id),
        task_queue=f"nobody-{uuid.uuid4().hex}",
        search_attributes=search_attributes(project_id=waiting.id),
    )
    async with running_worker(client, db, redis, home, **options) as queue:
        cancelled = await start_engineering(client, await make_task(db, redis, waiting), queue)
        await eventually(lambda: _waiting(cancelled))
        await cancelled.cancel()
        try:
            await cancelled.result()
        except WorkflowFailureError:
            pass
        runs["engineering_cancelled"] = cancelled
    await blocker.terminate("recorded")
    return runs


async def _fails_for_want_of_an_agent(handle: WorkflowHandle[Any, Any]) -> None:
    try:
        await handle.result()
    except WorkflowFailureError as exc:
        assert "No coding agent is configured" in str(exc.cause), exc.cause
    else:
        raise AssertionError(f"{handle.id} found a coding agent: set no model key to record it")


PROVISION_PATHS = {"provision"}


async def _run_provision_paths(
    client: Client, db: Database, redis: Redis, home: Path, secrets: list[str]
) -> dict[str, WorkflowHandle[Any, Any]]:
    """A server added and provisioned: this machine, over SSH through a throwaway sshd."""
    vault = Vault.from_settings(Settings(home=home))  # the worker's, in the same home
    with ssh_host() as sshd:
        secrets.append(sshd.private_key)
        async with db.session() as session:
            _, message, _ = await server_service.create_server(
                session,
                vault,
                handle="web-1",
                host=sshd.host,
                port=sshd.port,
                ssh_user=sshd.user,
                private_key=sshd.private_key,
                apps_root=None,
            )
        async with running_worker(client, db, redis, home, identity=IDENTITY) as queue:
            await start_provision(client, message, task_queue=queue)
            handle = client.get_workflow_handle(provision_workflow_id(message.server_handle))
            await handle.result()
    return {"provision": handle}


DEPLOY_PATHS = {
    "deploy",
    "ansible_deploy",
    "deploy_stopped",
    "deploy_waited_for_secret",
    "deploy_failed",
}
# The secret the recording's app waits for: a made-up value, and no recording may contain it.
FAKE_SECRET = "fake-api-token-for-recorded-histories"


async def _run_deploy_paths(
    client: Client, db: Database, redis: Redis, home: Path, secrets: list[str]
) -> dict[str, WorkflowHandle[Any, Any]]:
    """Deploys to this machine through a throwaway sshd, on testing/deploy.py's stack (the
    API, a bridge, a READY server): one that completes (and its Ansible run) and is then stopped,
    one that waits for a secret until it is set through the API, one whose release cannot start."""
    runs: dict[str, WorkflowHandle[Any, Any]] = {}
    with ssh_host() as sshd:
        secrets.extend([sshd.private_key, FAKE_SECRET])
        async with deploy_stack_on(db, redis, client, sshd, home) as stack:
            project = await stack.project("webapp")
            deployed = await _deployed(stack, project["id"], "COMPLETED")
            runs["deploy"] = client.get_workflow_handle(deployed["workflow_id"])
            request_id = f"{deployed['id']}-{deployed['result']['release']}"
            runs["ansible_deploy"] = client.get_workflow_handle(
                ansible_deploy_workflow_id(request_id)
            )
            stopped = await _deployed(stack, project["id"], "COMPLETED", action="stop")
            runs["deploy_stopped"] = client.get_workflow_handle(stopped["workflow_id"])

            files = {".orchestrator.yml": manifest("secretive", ["API_TOKEN"])}
            secretive = await stack.project("secretive", **files)
            waiting = await stack.deploy(secretive["id"])
            await eventually(
                lambda: _status_is(stack, waiting["id"], "WAITING_HUMAN"),
                "the deploy waiting for API_TOKEN",
                within=120,
            )
            put = await stack.api.put(
                "/projects/secretive/secrets/API_TOKEN", json={"value": FAKE_SECRET}
            )
            assert put.status_code == 201, put.text  # the API signals secrets_changed
            done = await stack.finished(waiting["id"])
            assert done["status"] == "COMPLETED", done["error"]
            runs["deploy_waited_for_secret"] = client.get_workflow_handle(waiting["workflow_id"])

            crasher = await stack.project("crasher", **{"app/__main__.py": BROKEN_MAIN})
            failed = await _deployed(stack, crasher["id"], "FAILED")
            assert "boom: this release cannot start" in failed["error"], failed["error"]
            runs["deploy_failed"] = client.get_workflow_handle(failed["workflow_id"])
    return runs


async def _deployed(
    stack: DeployStack, project_id: str, status: str, action: str = "create"
) -> dict[str, Any]:
    """A deploy task of ``project_id`` once it ended, which it did with ``status``."""
    task = await stack.finished((await stack.deploy(project_id, action))["id"])
    assert task["status"] == status, (task["status"], task["error"])
    return task


async def _status_is(stack: DeployStack, task_id: str, status: str) -> bool:
    return bool((await stack.task(task_id))["status"] == status)


DEVELOPMENT_PATHS = {
    "engineering_developed",
    "engineering_answered",
    "engineering_cancelled_creating_worker",
    "engineering_cancelled_waiting_for_a_slot",
    "po_session",
}
# Recorded by older code, kept so that the replay test goes on proving that runs from before a
# ``workflow.deprecate_patch`` replay: their markers (not deprecated) say they took the now only
# side of the retired patches ``engineering-development-graph`` (both) and
# ``engineering-free-worker-while-waiting`` (engineering_answered_frees_worker). The recorder
# writes engineering_developed only when named, and engineering_answered_frees_worker no more:
# engineering_answered records its path. engineering_cancelled_creating_worker was recorded while
# create_container waited for a Worker slot, which no activity does any more: it stays, as the
# proof that such runs replay. deploy_waited_for_ansible_in_an_activity is the deploy recorded
# while the ansible node's activity waited for the playbook (now the workflow waits for a signal).
KEPT = {
    "engineering_developed",
    "engineering_answered_frees_worker",
    "engineering_cancelled_creating_worker",
    "deploy_waited_for_ansible_in_an_activity",
}
PO_CHAT = 424242
BLOCKED_THEN_DONE = {
    "rounds": [
        {"report": "blocked", "question": "Should greet() say Hello or Hi?"},
        {
            "write": [SCRIPT["rounds"][1]["write"], SCRIPT["rounds"][0]["write"][1]],
            "commit": "Add greet()",
            "report": "completed",
        },
    ]
}


async def _run_development_paths(
    client: Client, db: Database, redis: Redis, home: Path, docker_host: str
) -> dict[str, WorkflowHandle[Any, Any]]:
    """The development graph: a failing round fixed in the next; a question answered (the
    Worker given back while the task waits); a task cancelled while it waits for a Worker slot.
    Then a PO session."""
    runs: dict[str, WorkflowHandle[Any, Any]] = {}
    docker_client = docker.DockerClient(base_url=docker_host, timeout=120)
    image_builder(docker_client).ensure("scripted")
    runtime = small_runtime(docker_client)
    project = await make_project(db, name="greeter")
    async with running_worker(client, db, redis, home, runtime=runtime, identity=IDENTITY) as queue:
        developed = await make_scripted_task(db, redis, project, SCRIPT)
        handle = await start_engineering(client, developed, queue)
        await handle.result()
        runs["engineering_developed"] = handle

        asking = await make_scripted_task(db, redis, project, BLOCKED_THEN_DONE)
        handle = await start_engineering(client, asking, queue)
        await eventually(lambda: _asks(handle), within=120)
        await handle.execute_update(TASK_RESPOND, HumanAnswer(answer="Hello"))
        await handle.result()
        runs["engineering_answered"] = handle
        runs["po_session"] = await _po_session(client, queue)
    runs["engineering_cancelled_waiting_for_a_slot"] = await _cancelled_waiting_for_a_slot(
        client, db, redis, home, runtime, project
    )
    docker_client.close()
    return runs


async def _cancelled_waiting_for_a_slot(
    client: Client,
    db: Database,
    redis: Redis,
    home: Path,
    runtime: ContainerRuntime,
    project: Project,
) -> WorkflowHandle[Any, Any]:
    """A task cancelled while it waits for a Worker slot: the only one is held in the name of a
    run no worker takes up, the task asks and waits in workflow code, the cancel comes, it leaves
    the queue (its give-back), removes its Worker (none was made) and ends CANCELLED."""
    holder = await client.start_workflow(
        "HoldsAWorkerSlot",
        id=f"slot-holder-{uuid.uuid4().hex}",
        task_queue=f"nobody-{uuid.uuid4().hex}",
    )
    settings = Settings(home=home, max_workers=1)
    try:
        async with running_worker(
            client, db, redis, home, settings=settings, runtime=runtime, identity=IDENTITY
        ) as queue:
            taken = await ask_turn(client, queue, WORKERS_POOL, holder.id, "holder", max_workers=1)
            assert taken.granted, taken
            task = await make_scripted_task(db, redis, project, SCRIPT)
            handle = await start_engineering(client, task, queue)
            await eventually(
                lambda: _waits_for_a_slot(client, queue, handle),
                "the task waiting for a slot",
                within=60,
            )
            await handle.cancel()
            try:
                await handle.result()
            except WorkflowFailureError as exc:
                assert isinstance(exc.cause, CancelledError), exc.cause
            else:
                raise AssertionError(f"{handle.id} was not cancelled")
    finally:
        await holder.terminate("recorded")
    return handle


async def _waits_for_a_slot(client: Client, queue: str, handle: WorkflowHandle[Any, Any]) -> bool:
    """The task is queued for a Worker slot and holds no activity."""
    waiting = [t.holder for t in (await pool_state(client, queue, WORKERS_POOL)).waiting]
    described = await handle.describe()
    return handle.id in waiting and not described.raw_description.pending_activities


async def _po_session(client: Client, queue: str) -> WorkflowHandle[Any, Any]:
    """A PO session's first run: two turns with a Worker's response between, then
    continue-as-new; the next run is cancelled (its Worker removed)."""
    rounds = [{"report": "completed", "summary": f"reply {n}"} for n in (1, 2, 3)]
    session = POSessionInput(
        chat_id=PO_CHAT,
        agent="scripted",
        agent_options={"script": {"rounds": rounds}},
        max_turns_per_run=2,
    )
    await send_po_message(client, session, POMessage(message_id=1, text="hello"), task_queue=queue)
    first = client.get_workflow_handle(po_session_workflow_id(PO_CHAT))
    run_id = (await first.describe()).run_id
    await first.execute_update(PO_RESPOND, POResponse(response_id="r1", text="working on it"))
    message = POMessage(message_id=2, text="make me a todo API")
    await send_po_message(client, session, message, task_queue=queue)

    async def continued() -> bool:
        return (await first.describe()).run_id != run_id

    await eventually(continued, within=60)
    latest = client.get_workflow_handle(po_session_workflow_id(PO_CHAT))
    await latest.cancel()
    with contextlib.suppress(WorkflowFailureError):
        await latest.result()
    return client.get_workflow_handle(po_session_workflow_id(PO_CHAT), run_id=run_id)


async def _asks(handle: WorkflowHandle[Any, Any]) -> bool:
    return bool(await handle.query(TASK_QUESTION))


async def _waiting(handle: WorkflowHandle[Any, Any]) -> bool:
    described = await handle.describe()
    return any(
        a.activity_type.name == "wait_for_scaffold"
        for a in described.raw_description.pending_activities
    )


def _assert_no_secret(name: str, data: Any, text: str, secrets: list[str]) -> None:
    """Neither the file nor any payload in it (base64 there) holds a secret or a line of one
    (a key's lines may have been joined with an escaped newline)."""
    payloads = "\n".join(_payload_texts(data))
    for secret in secrets:
        lines = [line for line in secret.splitlines() if len(line) >= 16 and "-----" not in line]
        for needle in (secret, *lines):
            assert needle not in text and needle not in payloads, f"{name} holds a secret"


def _assert_no_machine_path(name: str, data: Any, text: str) -> None:
    """Neither the file nor any payload in it names a directory of this machine: the checkout,
    the user's home, the temporary directory."""
    payloads = "\n".join(_payload_texts(data))
    replaced = {"/", "/app", "/srv/orchestrator", "/home/orchestrator"}  # the cleaner's own
    for path in {str(REPO_ROOT), str(Path.home()), tempfile.gettempdir()} - replaced:
        needle = f"{path}/"
        assert needle not in text and needle not in payloads, f"{name} holds the path {path}"


def _payload_texts(value: Any) -> list[str]:
    if isinstance(value, dict):
        if isinstance(value.get("data"), str) and isinstance(value.get("metadata"), dict):
            return [base64.b64decode(value["data"]).decode(errors="replace")]
        return [text for item in value.values() for text in _payload_texts(item)]
    if isinstance(value, list):
        return [text for item in value for text in _payload_texts(item)]
    return []


class _Cleaner:
    """Replaces this machine's paths and name in every string and JSON payload of a history."""

    def __init__(self, home: Path) -> None:
        self.replacements = [
            (str(home), "/srv/orchestrator"),
            (str(REPO_ROOT), "/app"),
            (sys.base_prefix, "/python"),
            # The user's home: the SSH target's default apps root (~/orchestrator-apps) is in it.
            (f"{Path.home()}/", "/home/orchestrator/"),
            (socket.gethostname(), "host"),
        ]

    def text(self, value: str) -> str:
        for needle, replacement in self.replacements:
            value = value.replace(needle, replacement)
        return value

    def clean(self, value: Any) -> Any:
        if isinstance(value, dict):
            if "data" in value and isinstance(value.get("metadata"), dict):
                return self._payload(value)
            return {key: self.clean(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.clean(item) for item in value]
        if isinstance(value, str):
            return self.text(value)
        return value

    def _payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        encoding = base64.b64decode(payload["metadata"].get("encoding", "")).decode()
        if encoding != "json/plain":
            return payload
        data = self.text(base64.b64decode(payload["data"]).decode())
        return {**payload, "data": base64.b64encode(data.encode()).decode()}


ALL_PATHS = {
    "engineering",
    "engineering_cancelled",
    "engineering_existing_repository",
    "engineering_failed",
    "scaffold",
    "scaffold_failed",
    *DEVELOPMENT_PATHS,
    *PROVISION_PATHS,
    *DEPLOY_PATHS,
}


def main() -> None:
    names = set(sys.argv[1:]) or ALL_PATHS - KEPT
    unknown = names - ALL_PATHS
    if unknown:
        sys.exit(f"unknown paths: {sorted(unknown)}; known: {sorted(ALL_PATHS)}")
    for path in asyncio.run(record(HERE, names)):
        print(f"wrote {path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
