"""The real ``claude``, ``codex`` and ``droid`` CLIs run a whole engineering task, through the
model gateway.

Each run: a scaffolded project, ``EngineeringWorkflow`` on the real worker (real Temporal dev
server, podman, SQLite, Redis), the agent's Worker image without a network, and the gateway on
the host forwarding to a local stand-in of the model API (Anthropic Messages for claude and for
droid's custom model, OpenAI Responses for codex) that answers with scripted tool calls: write a
feature and its unittest test. The Tester runs the project's ``make test`` in the Worker, the
pull request lands in the local forge.

One run per agent serves several tests (module-scoped): what the task reports, and a scan of
everything the run left (Temporal histories, the database, Redis streams, the worker's log
lines, the files under the home, the Worker's environment) for the model API keys, a git token
and the package registries' private tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
import shutil
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from temporalio.client import Client, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from api.schemas import TaskCreate
from core.contracts.agents import TaskUsage
from core.contracts.engineering import EngineeringOptions
from core.contracts.workflows import EngineeringOutput
from core.enums import AgentName, EventType, TaskStatus
from core.ids import scaffold_workflow_id
from core.settings import Settings
from db.engine import Database
from db.migrate import upgrade_async
from db.outbox import publish
from db.tables import Task, TaskEventRow
from db.tasks import TaskService
from gateway import Gateway, GatewaySettings
from infra.agents import KEY_PLACEHOLDER
from infra.containers import TASK_ID, ContainerRuntime, ExecResult
from infra.forges.local import LocalForge
from testing.images import image_builder
from testing.logs import logs_to
from testing.standins.anthropic_api import AnthropicStandIn
from testing.standins.openai_api import OpenAIStandIn
from testing.standins.recording import FileWrite, ModelScript, RecordedRequest
from testing.standins.server import serve
from testing.workflows import (
    events,
    get_task,
    git_out,
    make_project,
    running_worker,
    start_engineering,
)

# The gateway's keys: fake, but shaped like real ones, and unique enough to search for.
ANTHROPIC_SECRET = "sk-ant-test-SECRET-4f1c9e27b8d3a6052e7f"
OPENAI_SECRET = "sk-proj-test-SECRET-9b2d7e61c4a8f3057d1e"
# Nothing in these runs uses a git token (the local forge needs none): the worker's environment
# holds one anyway, as a deployment's would, and the scan shows it goes nowhere.
GIT_TOKEN = "ghp_testSECRET0a1b2c3d4e5f6a7b8c9d0e1f2a3b"
# A private package index's and npm registry's tokens, as a deployment's settings hold them: the
# Worker's installs go through the caches, which alone use them (tests/e2e/test_worker_packages.py
# shows the caches' side); the worker process has them here and the scan shows they go nowhere.
PYPI_INDEX_TOKEN = "pypi-agents-SECRET-2b7e91c0d4f3"
NPM_REGISTRY_TOKEN = "npm_agentsSECRET6d0f3a9c1e58"
SECRETS = (ANTHROPIC_SECRET, OPENAI_SECRET, GIT_TOKEN, PYPI_INDEX_TOKEN, NPM_REGISTRY_TOKEN)
# The worker process's environment during a run, as a deployment sets it.
SECRET_ENV = {
    "ANTHROPIC_API_KEY": ANTHROPIC_SECRET,
    "OPENAI_API_KEY": OPENAI_SECRET,
    "GITHUB_TOKEN": GIT_TOKEN,
    "ORCHESTRATOR_PYPI_INDEX_TOKEN": PYPI_INDEX_TOKEN,
    "ORCHESTRATOR_NPM_REGISTRY_TOKEN": NPM_REGISTRY_TOKEN,
}

FEATURE = 'def greet(name):\n    return f"Hello, {name}!"\n'
FEATURE_TEST = """import unittest

from app.greeting import greet


class GreetingTest(unittest.TestCase):
    def test_greets_by_name(self):
        self.assertEqual(greet("Ada"), "Hello, Ada!")
"""
SUMMARY = "Added greet() and its test."
SCRIPT = ModelScript(
    writes=[
        FileWrite("app/greeting.py", FEATURE),
        FileWrite("tests/test_greeting.py", FEATURE_TEST),
    ],
    final_text=SUMMARY,
    input_tokens=150,
    output_tokens=25,
)
SPEC = "Add a greet(name) function in app/greeting.py with a unittest test."
FILES = ["app/greeting.py", "tests/test_greeting.py"]
RUN_TIMEOUT_S = 180.0
CLI_AGENTS = ["claude", "codex", "droid"]
# The agents whose model calls go to the Anthropic Messages API (droid through its custom model).
ANTHROPIC_AGENTS = ("claude", "droid")


class RecordingRuntime(ContainerRuntime):
    """The real runtime, noting what every command in a Worker was given, every file written
    into it (the CLIs' settings), and what its container holds (its environment, command,
    mounts) while the Worker exists."""

    def __init__(self, client: docker.DockerClient, settings: Settings) -> None:
        super().__init__(client, settings)
        self.exec_envs: list[dict[str, str]] = []
        self.put_files: dict[str, str] = {}
        self.containers: list[dict[str, Any]] = []

    async def put_file(self, worker_id: str, path: str, content: bytes, mode: int = 0o644) -> None:
        self.put_files[path] = content.decode(errors="replace")
        await super().put_file(worker_id, path, content, mode)

    async def put_tree(
        self, worker_id: str, root: str, files: dict[str, tuple[bytes, int]]
    ) -> None:
        for path, (content, _) in files.items():
            self.put_files[posixpath.join(root, path)] = content.decode(errors="replace")
        await super().put_tree(worker_id, root, files)

    async def exec(self, worker_id: str, argv: list[str], **options: Any) -> ExecResult:
        self.exec_envs.append(dict(options.get("env") or {}))
        container = await asyncio.to_thread(self._find, worker_id)
        if container is not None:
            self.containers.append(container.attrs)
        return await super().exec(worker_id, argv, **options)


@dataclass
class AgentRun:
    agent: str
    task: Task
    home: Path
    log_file: Path
    db: Database
    redis: Redis
    standin: AnthropicStandIn | OpenAIStandIn
    runtime: RecordingRuntime
    usage: TaskUsage
    seconds: float
    output: EngineeringOutput | None = None
    failure: WorkflowFailureError | None = None
    histories: dict[str, str] = field(default_factory=dict)

    def model_calls(self) -> list[RecordedRequest]:
        if isinstance(self.standin, AnthropicStandIn):
            return self.standin.message_requests()
        return self.standin.response_requests()


@contextlib.contextmanager
def short_home() -> Iterator[Path]:
    # The task's gateway socket lives under <home>/run: its path must fit in 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="eng-"))
    try:
        yield path / "home"
    finally:
        shutil.rmtree(path, ignore_errors=True)


def gateway_for(db: Database, url: str) -> Gateway:
    settings = GatewaySettings(
        anthropic_base_url=url,
        openai_base_url=url,
        anthropic_api_key=ANTHROPIC_SECRET,
        openai_api_key=OPENAI_SECRET,
    )
    return Gateway(db, settings)


@contextlib.contextmanager
def stand_in(agent: str, script: ModelScript) -> Iterator[tuple[Any, str]]:
    standin: AnthropicStandIn | OpenAIStandIn
    standin = AnthropicStandIn(script) if agent in ANTHROPIC_AGENTS else OpenAIStandIn(script)
    with serve(standin.app) as url:
        yield standin, url


async def run_agent_task(
    *,
    agent: str,
    script: ModelScript,
    options: EngineeringOptions,
    client: Client,
    db: Database,
    redis: Redis,
    docker_client: docker.DockerClient,
    home: Path,
) -> AgentRun:
    """One engineering task from a fresh project to its end, with the worker's logs in a file."""
    project = await make_project(db, name=f"greeter-{agent}")
    task = await TaskService(db, redis).create(
        TaskCreate(project_id=project.id, spec=SPEC, engineering=options).new_task(
            project_name=project.name, user_id=project.owner_id
        )
    )
    await publish(db, redis)  # the engineering:queue message, as the API's relay sends it
    runtime = RecordingRuntime(docker_client, Settings(home=home))
    output: EngineeringOutput | None = None
    failure: WorkflowFailureError | None = None
    with (
        stand_in(agent, script) as (standin, url),
        logs_to(home.parent / "logs") as log_file,
        pytest.MonkeyPatch.context() as env,
    ):
        for name, value in SECRET_ENV.items():
            env.setenv(name, value)
        async with gateway_for(db, url) as gateway:
            started = time.monotonic()
            async with running_worker(
                client, db, redis, home, gateway=gateway, runtime=runtime
            ) as queue:
                handle = await start_engineering(client, task, queue)
                try:
                    async with asyncio.timeout(RUN_TIMEOUT_S):
                        output = await handle.result()
                except WorkflowFailureError as error:
                    failure = error
            seconds = time.monotonic() - started
            usage = await gateway.load_usage(task.id)
    run = AgentRun(
        agent=agent,
        task=task,
        home=home,
        log_file=log_file,
        db=db,
        redis=redis,
        standin=standin,
        runtime=runtime,
        usage=usage,
        seconds=seconds,
        output=output,
        failure=failure,
    )
    for workflow_id in (task.workflow_id, scaffold_workflow_id(project.id)):
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        run.histories[workflow_id] = history.to_json()
    return run


@pytest.fixture(scope="session")
def agent_images(docker_client: docker.DockerClient) -> dict[str, str]:
    """The agents' Worker images, built once per content hash (the worker's own builder finds
    them by the same hash)."""
    builder = image_builder(docker_client)
    return {agent: builder.ensure(agent).reference for agent in CLI_AGENTS}


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=CLI_AGENTS)
async def agent_run(
    request: pytest.FixtureRequest,
    temporal_env: WorkflowEnvironment,
    redis_url: str,
    docker_client: docker.DockerClient,
    agent_images: dict[str, str],
) -> AsyncIterator[AgentRun]:
    """One successful task per agent, shared by the tests below (a run takes seconds)."""
    agent: AgentName = request.param
    with short_home() as home:
        home.mkdir(parents=True)
        url = f"sqlite+aiosqlite:///{home.parent / 'orchestrator.db'}"
        await upgrade_async(url)
        db = Database(url)
        # A database of its own on the session's server: other tests flush db 0.
        redis = Redis.from_url(redis_url.rsplit("/", 1)[0] + "/9")
        await redis.flushdb()
        try:
            yield await run_agent_task(
                agent=agent,
                script=SCRIPT,
                options=EngineeringOptions(agent=agent, max_rounds=2),
                client=temporal_env.client,
                db=db,
                redis=redis,
                docker_client=docker_client,
                home=home,
            )
        finally:
            await redis.flushdb()
            await redis.aclose()
            await db.dispose()


async def test_the_agent_writes_the_feature_and_a_pull_request_follows(
    agent_run: AgentRun, docker_client: docker.DockerClient
) -> None:
    run = agent_run
    print(f"{run.agent} task: {run.seconds:.1f} s", flush=True)
    assert run.failure is None, (run.failure, run.failure and run.failure.cause)
    assert run.output is not None and run.output.status == TaskStatus.completed
    result = run.output.result
    assert result is not None
    branch = f"task/{run.task.id}"
    assert result.agent == run.agent
    assert result.branch == branch and result.rounds == 1
    assert result.stages == ["scaffold", "developer", "tester", "pull_request"]
    assert sorted(result.files_changed) == FILES

    # The edit is on the pull request's branch in the forge.
    forge = LocalForge(run.home / "forge")
    full_name = f"local/greeter-{run.agent}"
    pull = forge.find_pull_request(full_name, branch)
    assert pull is not None and pull.url == result.pr_url
    bare = forge.path(full_name)
    head = git_out(bare, "rev-parse", f"refs/heads/{branch}")
    assert head == result.commit_sha == pull.head_sha
    assert git_out(bare, "show", f"{head}:app/greeting.py") + "\n" == FEATURE
    assert git_out(bare, "show", f"{head}:tests/test_greeting.py") + "\n" == FEATURE_TEST

    # The adapter parsed the CLI's real output: its summary, its edits (live and at the end).
    rows = await events(run.db, run.task.id)
    developer = [e for e in rows if e.stage == "developer"]
    done = [e for e in developer if e.type == EventType.stage_completed]
    assert [e.message for e in done] == [f"Round 1: the agent is done: {SUMMARY}"]
    # Every CLI names the files it edited (codex through apply_patch, droid through Create).
    assert sorted(done[0].data["files_changed"]) == FILES
    live = [e.message for e in developer if e.data.get("agent_event") == "file_change"]
    assert [name for name in FILES if any(name in m for m in live)] == FILES, live
    tester = [e for e in rows if e.stage == "tester" and e.type == EventType.stage_completed]
    assert [e.data["passed"] for e in tester] == [True]
    assert tester[0].data["tests_run"] > 1  # the template's tests and the agent's

    # Tokens come from the gateway's count: every model call, as the stand-in answered it.
    calls = run.model_calls()
    assert len(calls) >= 3  # a tool round per file, then the final answer
    assert run.usage.calls == len(calls) and run.usage.refusals == 0
    assert (run.usage.tokens_in, run.usage.tokens_out) == (150 * len(calls), 25 * len(calls))
    assert (result.tokens_in, result.tokens_out) == (run.usage.tokens_in, run.usage.tokens_out)
    stored = await get_task(run.db, run.task.id)
    assert stored.status == TaskStatus.completed and stored.result is not None
    assert stored.result["tokens_in"] == result.tokens_in > 0

    # The stand-in got the gateway's key; the CLI in the Worker only ever had the placeholder.
    secret = ANTHROPIC_SECRET if run.agent in ANTHROPIC_AGENTS else OPENAI_SECRET
    if run.agent in ANTHROPIC_AGENTS:
        assert {c.headers.get("x-api-key") for c in calls} == {secret}
    else:
        assert {c.headers.get("authorization") for c in calls} == {f"Bearer {secret}"}
    # claude and codex take it from their environment, droid from its custom model's settings.
    agent_envs = [env for env in run.runtime.exec_envs if KEY_PLACEHOLDER in env.values()]
    agent_files = [path for path, text in run.runtime.put_files.items() if KEY_PLACEHOLDER in text]
    assert agent_envs or agent_files, (run.runtime.exec_envs, list(run.runtime.put_files))
    left = docker_client.containers.list(all=True, filters={"label": f"{TASK_ID}={run.task.id}"})
    assert left == []


async def test_no_secret_in_histories_events_logs_or_queues(agent_run: AgentRun) -> None:
    run = agent_run
    assert run.output is not None  # a run that got somewhere: otherwise the scan proves little
    # The engineering run and its scaffold child: inputs, results, failures, summaries.
    places = {f"history {key}": text for key, text in run.histories.items()}
    for workflow_id, text in run.histories.items():
        assert "EVENT_TYPE_ACTIVITY_TASK_COMPLETED" in text, workflow_id

    # The whole database: tasks, events, outbox, model usage, pull requests.
    await run.db.dispose()  # everything written is in the file
    database = Path(str(run.db.url).removeprefix("sqlite+aiosqlite:///"))
    with contextlib.closing(sqlite3.connect(database)) as conn:
        places["database"] = "\n".join(conn.iterdump())
    assert run.task.id in places["database"]

    # Every Redis stream (task progress, callbacks, queues) of the run's database.
    streams = [key async for key in run.redis.scan_iter(_type="stream")]
    assert any(run.task.id.encode() in key for key in streams), streams
    assert b"engineering:queue" in streams
    for key in streams:
        entries = await run.redis.xrange(key)
        places[f"stream {key.decode()}"] = repr(entries)

    # The worker's log lines, as production writes them.
    logs = run.log_file.read_text()
    assert '"model call"' in logs and run.task.id in logs  # the gateway logged its calls
    places["worker log"] = logs

    # The Worker: its container (environment, command, mounts) and every command's environment.
    assert run.runtime.containers, "no Worker container was seen"
    places["containers"] = json.dumps(run.runtime.containers, default=str)
    places["exec environments"] = json.dumps(run.runtime.exec_envs)
    for path, text in run.runtime.put_files.items():  # the CLIs' settings and instructions
        places[f"Worker file {path}"] = text

    # Every file the run left under the home: forge, workspace, gateway sockets' directories.
    for path in sorted(p for p in run.home.rglob("*") if p.is_file() and not p.is_symlink()):
        places[f"file {path.relative_to(run.home)}"] = path.read_bytes().decode(errors="replace")

    leaks = [
        (place, secret) for place, text in places.items() for secret in SECRETS if secret in text
    ]
    assert leaks == []
    # The scan would have found it: the gateway did send it upstream.
    assert any(
        secret in json.dumps(call.headers) for call in run.model_calls() for secret in SECRETS
    )


@pytest.mark.parametrize("agent", CLI_AGENTS)
async def test_a_call_past_the_budget_is_refused_and_the_task_fails(
    agent: AgentName,
    temporal_client: Client,
    docker_client: docker.DockerClient,
    agent_images: dict[str, str],
    sqlite_database: Database,
    redis: Redis,
) -> None:
    # 150 + 25 tokens per call: the first call fits (the budget is checked before a call), the
    # second is past 100 tokens and refused.
    options = EngineeringOptions(agent=agent, max_rounds=2, max_tokens=100)
    with short_home() as home:
        run = await run_agent_task(
            agent=agent,
            script=SCRIPT,
            options=options,
            client=temporal_client,
            db=sqlite_database,
            redis=redis,
            docker_client=docker_client,
            home=home,
        )
    print(f"{agent} budget task: {run.seconds:.1f} s", flush=True)
    assert run.failure is not None, run.output
    task = await get_task(sqlite_database, run.task.id)
    assert task.status == TaskStatus.failed
    assert task.error is not None
    assert "the model gateway refused the agent's call in round 1" in task.error, task.error
    assert "task budget exhausted: 175 of 100 tokens used" in task.error, task.error
    assert run.usage.calls == 1 and run.usage.refusals >= 1
    assert (run.usage.tokens_in, run.usage.tokens_out) == (150, 25)
    # The refused call never reached the stand-in; the agent stopped at the refusal.
    assert len(run.model_calls()) == 1
    rows: list[TaskEventRow] = await events(sqlite_database, run.task.id)
    assert rows[-1].type == EventType.failed and "budget" in rows[-1].message
    assert not [e for e in rows if e.stage == "tester"]
    left = docker_client.containers.list(all=True, filters={"label": f"{TASK_ID}={run.task.id}"})
    assert left == []
