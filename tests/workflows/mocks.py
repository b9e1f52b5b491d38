"""Stand-ins for the activities and graph nodes of EngineeringWorkflow, DeployWorkflow and
POSessionWorkflow: their branches tested in seconds on the time-skipping test server.

Each stand-in is registered under its real activity's name (workflows call activities by name),
writes what it was asked to one :class:`Log` and answers what the test set up. The graphs are
the real ones (``build_development_graph`` / ``build_devops_graph``) over scripted nodes, which
the LangGraph plugin turns into activities as it does the real nodes; the workflows are the real
classes in the real sandbox (``stack.temporal_worker.workflow_runner``). Where a test needs a
workflow to stand still it holds an activity (:meth:`Log.hold`), and it waits on conditions,
never on the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.langgraph import LangGraphPlugin
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import (
    Interceptor,
    StartChildWorkflowInput,
    Worker,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from activities.deploy import (
    AnsibleOutcome,
    AppOnServer,
    DeployPlan,
    FailureInput,
    LockInput,
    SecretsInput,
    StoppedInput,
    ansible_outcome_of,
)
from activities.development import DevelopmentNodes, DevelopmentState
from activities.devops import DevOpsNodes, DevOpsState
from activities.engineering import TaskPlan, Workspace, WorkspaceInput
from activities.forge import FindRepositoryInput, ScaffoldRequest
from activities.po import PrepareSessionInput, PublishToChatInput, SessionPlan
from activities.releases import StopAppInput, StopAppResult
from activities.tasks import (
    FinishTaskInput,
    ProjectInfo,
    ProjectStatusInput,
    QuestionInput,
    StartTaskResult,
    TaskEventInput,
)
from activities.turns import TurnActivities
from activities.workers import AgentTurnInput, CreateContainerInput
from core.contracts.agents import AgentResult, TaskUsage
from core.contracts.chat import ChatNote, ChatReply
from core.contracts.deploy import AnsibleDeployMessage, AnsibleDeployResult
from core.contracts.scaffolder import ScaffoldResult
from core.contracts.workflows import (
    PO_WORKERS_POOL,
    TURNS_STATE,
    WORKERS_POOL,
    DeployInput,
    DeployOutput,
    EngineeringInput,
    EngineeringOutput,
    POMessage,
    POSessionInput,
    POSessionOutput,
    ScaffoldInput,
    TurnsState,
    deploy_pool,
)
from core.enums import (
    TERMINAL_STATUSES,
    DeployAction,
    EventType,
    ProjectStatus,
    TaskStatus,
)
from core.ids import (
    ansible_deploy_workflow_id,
    deploy_workflow_id,
    engineering_workflow_id,
    po_session_workflow_id,
    scaffold_workflow_id,
    turns_workflow_id,
)
from core.settings import Settings
from core.task_queues import ANSIBLE, CONTAINERS, capability_queue
from stack.temporal_worker import workflow_runner
from testing.waiting import eventually
from testing.workflows import end_pools
from workflows.ansible_deploy import AnsibleDeployWorkflow
from workflows.deploy import DeployWorkflow
from workflows.development import DEVELOPMENT_GRAPH, build_development_graph
from workflows.devops import DEVOPS_GRAPH, build_devops_graph
from workflows.engineering import EngineeringWorkflow
from workflows.po_session import POSessionWorkflow, send_po_message
from workflows.scaffold import ScaffoldWorkflow
from workflows.turns import TurnsWorkflow

WORKFLOWS: list[type] = [
    EngineeringWorkflow,
    ScaffoldWorkflow,
    DeployWorkflow,
    AnsibleDeployWorkflow,
    POSessionWorkflow,
    TurnsWorkflow,
]
# How long a test waits for a workflow to get somewhere: a run takes milliseconds here.
WITHIN_S = 10.0


@dataclass
class Call:
    name: str
    arg: Any


class Log:
    """Every stand-in's calls, in order; gates that hold a stand-in; failures it raises."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._gates: dict[str, asyncio.Event] = {}
        self._failures: dict[str, BaseException] = {}

    async def enter(self, name: str, arg: Any = None) -> None:
        """Record a call; raise the failure set for it (once); wait while it is held."""
        self.calls.append(Call(name, arg))
        failure = self._failures.pop(name, None)
        if failure is not None:
            raise failure
        gate = self._gates.get(name)
        if gate is not None:
            await gate.wait()

    def hold(self, name: str) -> asyncio.Event:
        """Hold every call of ``name`` until the returned event is set (or the worker stops)."""
        gate = self._gates[name] = asyncio.Event()
        return gate

    def fail(self, name: str, error: BaseException) -> None:
        """The next call of ``name`` raises ``error``."""
        self._failures[name] = error

    def release(self, name: str) -> None:
        self._gates[name].set()

    def release_all(self) -> None:
        for gate in self._gates.values():
            gate.set()

    def names(self, *only: str) -> list[str]:
        """The calls' names in order; only those of ``only`` when given."""
        return [call.name for call in self.calls if not only or call.name in only]

    def args(self, name: str) -> list[Any]:
        return [call.arg for call in self.calls if call.name == name]

    def count(self, name: str) -> int:
        return len(self.args(name))

    async def reached(self, name: str, times: int = 1) -> None:
        await eventually(
            lambda: self.count(name) >= times, f"{name} called {times} time(s)", within=WITHIN_S
        )


def activities_of(holder: object) -> list[Callable[..., Any]]:
    """The methods of ``holder`` (an object or a class) that are activities."""
    found = []
    for name in dir(holder):
        member = getattr(holder, name)
        if callable(member) and hasattr(member, "__temporal_activity_definition"):
            found.append(member)
    return found


# --- the task row and its project (activities/tasks.py) -----------------------------------------


class TaskRows:
    """One task's row and its project, as the task activities move them."""

    def __init__(self, log: Log, project: ProjectInfo) -> None:
        self.log = log
        self.project = project
        self.status = TaskStatus.queued
        self.events: list[TaskEventInput] = []
        self.finished: FinishTaskInput | None = None
        self.questions: list[str] = []

    def messages(self, stage: str | None = None) -> list[str]:
        return [e.message for e in self.events if stage is None or e.stage == stage]

    def note(self, task_id: str, type: EventType, message: str, stage: str) -> None:
        """An event a graph node records itself (the real nodes write them through the
        database, not through ``record_event``)."""
        self.events.append(TaskEventInput(task_id=task_id, type=type, message=message, stage=stage))

    @activity.defn(name="start_task")
    async def start_task(self, task_id: str) -> StartTaskResult:
        await self.log.enter("start_task", task_id)
        if self.status in TERMINAL_STATUSES:
            return StartTaskResult(should_run=False, status=self.status)
        self.status = TaskStatus.running
        return StartTaskResult(should_run=True, status=self.status)

    @activity.defn(name="record_event")
    async def record_event(self, event: TaskEventInput) -> int:
        await self.log.enter("record_event", event)
        self.events.append(event)
        return len(self.events)

    @activity.defn(name="finish_task")
    async def finish_task(self, finish: FinishTaskInput) -> bool:
        await self.log.enter("finish_task", finish)
        if self.status in TERMINAL_STATUSES:
            return False
        self.status, self.finished = finish.status, finish
        return True

    @activity.defn(name="wait_for_human")
    async def wait_for_human(self, request: QuestionInput) -> bool:
        await self.log.enter("wait_for_human", request)
        self.status = TaskStatus.waiting_human
        self.questions.append(request.question)
        return True

    @activity.defn(name="answered")
    async def answered(self, request: QuestionInput) -> bool:
        await self.log.enter("answered", request)
        self.status = TaskStatus.running
        return True

    @activity.defn(name="get_project")
    async def get_project(self, project_id: str) -> ProjectInfo:
        await self.log.enter("get_project", project_id)
        return self.project

    @activity.defn(name="set_project_status")
    async def set_project_status(self, change: ProjectStatusInput) -> None:
        await self.log.enter("set_project_status", change)
        self.project = self.project.model_copy(update={"status": change.status})

    @activity.defn(name="record_repository")
    async def record_repository(self, result: ScaffoldResult) -> None:
        await self.log.enter("record_repository", result)
        self.project = self.project.model_copy(
            update={
                "repository": result.repository,
                "repo_full_name": result.repo_full_name,
                "status": ProjectStatus.ready,
            }
        )


# --- Worker containers, agent turns, the model gateway (activities/workers.py, gateway.py) ------


def echo_turn(turn: AgentTurnInput) -> AgentResult:
    """The PO's answer names the message it answers (the prompt ends with it)."""
    message = turn.prompt.rsplit("\n", 1)[-1]
    return AgentResult(status="completed", summary=f"PO on: {message}")


class Workers:
    def __init__(self, log: Log) -> None:
        self.log = log
        self.containers: set[str] = set()
        # What gateway_usage answers, one per call; the last one again once they run out.
        self.usage: list[TaskUsage] = [
            TaskUsage(task_id="", tokens_in=1200, tokens_out=300, cost_usd=0.042)
        ]
        self.turn: Callable[[AgentTurnInput], AgentResult] = echo_turn

    @activity.defn(name="create_container")
    async def create_container(self, request: CreateContainerInput) -> str:
        await self.log.enter("create_container", request)
        self.containers.add(request.worker_id)
        return request.worker_id

    @activity.defn(name="remove_container")
    async def remove_container(self, worker_id: str) -> bool:
        await self.log.enter("remove_container", worker_id)
        if worker_id not in self.containers:
            return False
        self.containers.discard(worker_id)
        return True

    @activity.defn(name="run_agent_turn")
    async def run_agent_turn(self, turn: AgentTurnInput) -> AgentResult:
        await self.log.enter("run_agent_turn", turn)
        return self.turn(turn)

    @activity.defn(name="close_gateway")
    async def close_gateway(self, task_id: str) -> None:
        await self.log.enter("close_gateway", task_id)

    @activity.defn(name="gateway_usage")
    async def gateway_usage(self, task_id: str) -> TaskUsage:
        await self.log.enter("gateway_usage", task_id)
        usage = self.usage.pop(0) if len(self.usage) > 1 else self.usage[0]
        return usage.model_copy(update={"task_id": task_id})


# --- plan, workspace, repository (activities/engineering.py, forge.py, temporal.py) -------------


class Engineering:
    def __init__(self, log: Log, env: WorkflowEnvironment, project_id: str) -> None:
        self.log = log
        self.env = env
        self.plan = TaskPlan(agent="claude", prompt="Add a /time endpoint", max_rounds=3)
        self.scaffold = ScaffoldResult(
            project_id=project_id,
            repository="file:///forge/local/shop.git",
            repo_full_name="local/shop",
            commit_sha="5caff01d",
            created=True,
        )

    @activity.defn(name="plan_task")
    async def plan_task(self, task_id: str) -> TaskPlan:
        await self.log.enter("plan_task", task_id)
        return self.plan

    @activity.defn(name="prepare_workspace")
    async def prepare_workspace(self, request: WorkspaceInput) -> Workspace:
        await self.log.enter("prepare_workspace", request)
        return Workspace(
            path=f"/workspaces/{request.task_id}", branch=request.branch, base_sha="ba5e"
        )

    @activity.defn(name="scaffold_repository")
    async def scaffold_repository(self, request: ScaffoldRequest) -> ScaffoldResult:
        await self.log.enter("scaffold_repository", request)
        return self.scaffold

    @activity.defn(name="find_repository")
    async def find_repository(self, found: FindRepositoryInput) -> ScaffoldResult | None:
        await self.log.enter("find_repository", found)
        return self.scaffold.model_copy(update={"created": False})

    @activity.defn(name="wait_for_scaffold")
    async def wait_for_scaffold(self, workflow_id: str) -> ScaffoldResult:
        await self.log.enter("wait_for_scaffold", workflow_id)
        handle = self.env.client.get_workflow_handle(workflow_id, result_type=ScaffoldResult)
        return await handle.result()


# --- the development graph's nodes (activities/development.py) ----------------------------------


@dataclass
class Turn:
    """What the coding agent does in one developer turn: finish (the default), ask, or fail."""

    question: str | None = None
    failure: str | None = None


PULL_REQUEST_URL = "http://forge.local/local/shop/pulls/7"


class DevelopmentScript(DevelopmentNodes):
    """The development graph's activity nodes, answering from a script: the agent's turns, the
    test runs (passing once the script runs out), the pull request."""

    def __init__(self, log: Log, rows: TaskRows) -> None:
        self.log = log
        self.rows = rows
        self.turns: list[Turn] = []
        self.tests: list[bool] = []
        # What each developer turn was told beyond the task: test failures, a person's answer.
        self.feedback: list[str | None] = []

    async def developer(self, state: DevelopmentState) -> dict[str, Any]:
        await self.log.enter("developer", state)
        turn = self.turns.pop(0) if self.turns else Turn()
        self.feedback.append(state.get("feedback"))
        round_ = state["rounds"] + 1
        update: dict[str, Any] = {"turns": state["turns"] + 1, "feedback": None, "question": None}
        if turn.question:
            self._note(state, EventType.progress, f"Round {round_}: asks: {turn.question}")
            return {**update, "question": turn.question}
        if turn.failure:
            return {**update, "failure": f"the agent failed in round {round_}: {turn.failure}"}
        self._note(state, EventType.stage_completed, f"Round {round_}: the agent is done")
        return update

    async def tester(self, state: DevelopmentState) -> dict[str, Any]:
        await self.log.enter("tester", state)
        passed = self.tests.pop(0) if self.tests else True
        round_ = state["rounds"] + 1
        summary = "3 tests, OK" if passed else "3 tests, 1 failure: test_time"
        self._note(state, EventType.stage_completed, f"Round {round_}: the tests: {summary}")
        report = {"passed": passed, "exit_code": 0 if passed else 2, "summary": summary}
        feedback = None if passed else f"The project's tests fail ({summary})"
        return {"rounds": round_, "report": report, "feedback": feedback}

    async def propose(self, state: DevelopmentState) -> dict[str, Any]:
        await self.log.enter("propose", state)
        self._note(state, EventType.stage_completed, f"Pull request #7 opened: {PULL_REQUEST_URL}")
        return {
            "pull": {"number": 7, "url": PULL_REQUEST_URL, "head_sha": "c0ffee"},
            "files_changed": ["app/time.py", "tests/test_time.py"],
            "commit_sha": "c0ffee",
        }

    def _note(self, state: DevelopmentState, type: EventType, message: str) -> None:
        self.rows.note(state["task_id"], type, message, "developer")


# --- the deploy's own activities (activities/deploy.py, releases.py) ----------------------------


class Deploys:
    """DeployWorkflow's activities and AnsibleDeployWorkflow's: the ports in ``busy_ports`` are
    taken on the server by another process."""

    def __init__(self, log: Log, client: Client, task_id: str, project_id: str) -> None:
        self.log = log
        self.client = client
        self.busy_ports: set[int] = set()
        self.playbook_error: str | None = None  # deploy.yml fails with it
        self.plan = DeployPlan(
            task_id=task_id,
            project_id=project_id,
            project_name="shop",
            action=DeployAction.create,
            repo_full_name="local/shop",
            repository="file:///forge/local/shop.git",
            release="20260101120000-r2",
        )
        self.secrets: set[str] = set()
        self.apps: list[AppOnServer] = []
        self.failures: list[str] = []

    @activity.defn(name="plan_deploy")
    async def plan_deploy(self, task_id: str) -> DeployPlan:
        await self.log.enter("plan_deploy", task_id)
        return self.plan

    # Runs from before the turns patch took the project's lock in these; none runs here.
    @activity.defn(name="acquire_deploy_lock")
    async def acquire_deploy_lock(self, request: LockInput) -> float:
        await self.log.enter("acquire_deploy_lock", request)
        return 0.0

    @activity.defn(name="release_deploy_lock")
    async def release_deploy_lock(self, request: LockInput) -> None:
        await self.log.enter("release_deploy_lock", request)

    @activity.defn(name="missing_secrets")
    async def missing_secrets(self, request: SecretsInput) -> list[str]:
        # Read before a held call waits: it answers what it read, as a slow database query would.
        missing = [name for name in request.names if name not in self.secrets]
        await self.log.enter("missing_secrets", request)
        return missing

    @activity.defn(name="record_deploy_failure")
    async def record_deploy_failure(self, failure: FailureInput) -> None:
        await self.log.enter("record_deploy_failure", failure)
        self.failures.append(failure.error)

    @activity.defn(name="apps_of_project")
    async def apps_of_project(self, project_id: str) -> list[AppOnServer]:
        await self.log.enter("apps_of_project", project_id)
        return self.apps

    @activity.defn(name="record_stopped")
    async def record_stopped(self, request: StoppedInput) -> int:
        await self.log.enter("record_stopped", request)
        return 2 * len(self.apps)

    @activity.defn(name="stop_app")
    async def stop_app(self, request: StopAppInput) -> StopAppResult:
        await self.log.enter("stop_app", request)
        return StopAppResult(server_handle=request.server_handle, app_found=True)

    @activity.defn(name="ansible_outcome")
    async def ansible_outcome(self, request_id: str) -> AnsibleOutcome:
        """The real question to Temporal about the test's Ansible run."""
        await self.log.enter("ansible_outcome", request_id)
        return await ansible_outcome_of(self.client, request_id)

    # --- AnsibleDeployWorkflow's playbook (activities/releases.py) ---

    @activity.defn(name="deploy_release")
    async def deploy_release(self, message: AnsibleDeployMessage) -> AnsibleDeployResult:
        """deploy.yml: the release serves, unless its port is in ``busy_ports``."""
        await self.log.enter("deploy_release", message)
        common = {"request_id": message.request_id, "release": message.release}
        if message.port in self.busy_ports:
            error = f"port {message.port} is in use on the server by another process"
            return AnsibleDeployResult(**common, success=False, error=error, port_busy=True)
        if self.playbook_error:
            return AnsibleDeployResult(**common, success=False, error=self.playbook_error)
        return AnsibleDeployResult(
            **common,
            success=True,
            deployed_url=f"http://{message.server_ip}:{message.port}",
            previous_release="20251231120000-r1",
            playbook_s=12.5,
        )

    @activity.defn(name="publish_deploy_result")
    async def publish_deploy_result(self, result: AnsibleDeployResult) -> None:
        await self.log.enter("publish_deploy_result", result)


# --- the DevOps graph's nodes (activities/devops.py) --------------------------------------------

FIRST_PORT = 8001
SERVER_IP = "10.0.0.5"


class DevOpsScript(DevOpsNodes):
    """The DevOps graph's activity nodes: the app needs ``required_env``; a node named in
    ``failing`` sets that failure. ``ansible`` starts the real AnsibleDeployWorkflow, as the
    bridge does with its message, over the stand-in playbook of :class:`Deploys`; ``released``
    is the real node, its events in the task's rows."""

    def __init__(self, log: Log, rows: TaskRows, client: Client, queue: str) -> None:
        self.log = log
        self.rows = rows
        self.client = client
        self.queue = queue
        self.required_env = ["DATABASE_URL"]
        self.failing: dict[str, str] = {}
        self.bridge_down = False  # nobody starts the Ansible run of the node's message

    async def analyze(self, state: DevOpsState) -> dict[str, Any]:
        return await self._node("analyze", state) or {
            "commit_sha": state.get("commit_sha") or "a11ce",
            "spec": {
                "source": "manifest",
                "runtime": "process",
                "service": "backend",
                "command": "python -m app",
                "port_env": "PORT",
                "health_path": "/health",
                "required_env": self.required_env,
            },
        }

    async def place(self, state: DevOpsState) -> dict[str, Any]:
        avoid = state.get("avoid_ports") or []
        port = next(p for p in range(FIRST_PORT, FIRST_PORT + 100) if p not in avoid)
        placement = {"deployment_id": "d1", "server": "web-1", "server_ip": SERVER_IP, "port": port}
        return await self._node("deployer", state) or {"placement": placement}

    async def release(self, state: DevOpsState) -> dict[str, Any]:
        failed = await self._node("ansible", state)
        if failed:
            return failed
        placement = state.get("placement") or {}
        attempt = (state.get("attempts") or 0) + 1
        request_id = state["request_id"] + (f"-{attempt}" if attempt > 1 else "")
        message = AnsibleDeployMessage(
            request_id=request_id,
            project_id=state["project_id"],
            project_name=state["project_name"],
            repo_full_name=state["repo_full_name"],
            server_ip=placement["server_ip"],
            server_handle=placement["server"],
            port=placement["port"],
            release=state["release"],
            notify_workflow_id=activity.info().workflow_id,
        )
        if not self.bridge_down:
            await self.client.start_workflow(
                AnsibleDeployWorkflow.run,
                message,
                id=ansible_deploy_workflow_id(request_id),
                task_queue=self.queue,
            )
        return {"attempts": attempt, "ansible_request": request_id, "deployed": None}

    async def released(self, state: DevOpsState) -> dict[str, Any]:
        await self.log.enter("released", state)
        return await super().released(state)

    async def _event(
        self,
        state: DevOpsState,
        type: EventType,
        message: str,
        stage: str,
        data: dict[str, Any] | None = None,
    ) -> None:
        self.rows.note(state["task_id"], type, message, stage)

    async def health(self, state: DevOpsState) -> dict[str, Any]:
        url = (state.get("deployed") or {}).get("deployed_url")
        return await self._node("health", state) or {"url": url}

    async def record(self, state: DevOpsState) -> dict[str, Any]:
        return await self._node("record", state) or {}

    async def _node(self, name: str, state: DevOpsState) -> dict[str, Any] | None:
        """Record the node's call; its failure update when the script says it fails."""
        await self.log.enter(name, state)
        self.rows.note(state["task_id"], EventType.stage_started, f"{name} runs", name)
        if name in self.failing:
            return {"failure": self.failing[name]}
        return None


# --- a PO session's workspace and chat (activities/po.py) ---------------------------------------


class Chats:
    def __init__(self, log: Log) -> None:
        self.log = log
        self.agent = "claude"
        self.published: list[ChatReply | ChatNote] = []

    def texts(self) -> list[str]:
        return [entry.text for entry in self.published]

    @activity.defn(name="prepare_session")
    async def prepare_session(self, request: PrepareSessionInput) -> SessionPlan:
        await self.log.enter("prepare_session", request)
        return SessionPlan(agent=self.agent, workspace=f"/po/{request.chat_id}")

    @activity.defn(name="publish_to_chat")
    async def publish_to_chat(self, request: PublishToChatInput) -> bool:
        await self.log.enter("publish_to_chat", request)
        entry = request.reply or request.note
        assert entry is not None
        self.published.append(entry)
        return True


# --- all of them on one worker ------------------------------------------------------------------


class NoChildSearchAttributes(Interceptor):
    """The Java test server knows none of our search attributes, and a child that carries them
    never starts there (the stack's prepare step registers them on the real server)."""

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        return _DropChildSearchAttributes


class _DropChildSearchAttributes(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_ChildWithoutSearchAttributes(outbound))


class _ChildWithoutSearchAttributes(WorkflowOutboundInterceptor):
    async def start_child_workflow(self, input: StartChildWorkflowInput) -> Any:
        input.search_attributes = None
        return await super().start_child_workflow(input)


class Fakes:
    """One test's stand-ins, a worker running the real workflows over them on a queue of its
    own, and the runs the test started (cancelled at the end if still running)."""

    def __init__(self, env: WorkflowEnvironment) -> None:
        self.env = env
        self.client = env.client
        self.queue = f"fast-{uuid.uuid4().hex}"
        self.task_id = uuid.uuid4().hex
        self.project_id = uuid.uuid4().hex
        self.chat_id = uuid.uuid4().int % 10**12
        self.log = Log()
        project = ProjectInfo(
            id=self.project_id,
            name="shop",
            status=ProjectStatus.ready,
            repository="file:///forge/local/shop.git",
            repo_full_name="local/shop",
        )
        self.rows = TaskRows(self.log, project)
        self.workers = Workers(self.log)
        self.engineering = Engineering(self.log, env, self.project_id)
        self.development = DevelopmentScript(self.log, self.rows)
        self.deploys = Deploys(self.log, self.client, self.task_id, self.project_id)
        self.devops = DevOpsScript(self.log, self.rows, self.client, self.queue)
        self.chats = Chats(self.log)
        self.session = POSessionInput(chat_id=self.chat_id, user_id="user-1")
        self._handles: list[WorkflowHandle[Any, Any]] = []

    async def cancel_while_held(self, handle: WorkflowHandle[Any, Any], held: str) -> None:
        """Cancel the run while the held activity ``held`` runs, and let that activity end (its
        result too late to matter) before the run's clean-up goes on.

        The run does not wait for a cancelled activity, but the Java test server skips no time
        while any activity is pending, and one left pending by a closed run stays so for good:
        every later test of the session would then run on the wall clock.
        """
        cleaning = self.log.hold("remove_container")
        await handle.cancel()
        await self.log.reached("remove_container")
        self.log.release(held)
        await eventually(
            lambda: cancelled_activities_ended(handle),
            f"the cancelled {held} ended",
            within=WITHIN_S,
        )
        cleaning.set()

    async def waits_for_a_person(self, handle: WorkflowHandle[Any, Any]) -> None:
        """Until the task is WAITING_HUMAN and its run holds no activity any more (a cancel that
        crosses the end of an activity trips the test server up)."""

        async def waiting() -> bool:
            if self.rows.status is not TaskStatus.waiting_human:
                return False
            return not (await handle.describe()).raw_description.pending_activities

        await eventually(waiting, "the task waiting for a person", within=WITHIN_S)

    def new_project(self) -> None:
        """The project has no repository yet: the engineering task scaffolds it."""
        self.rows.project = self.rows.project.model_copy(
            update={"repository": None, "repo_full_name": None, "status": ProjectStatus.new}
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Fakes]:
        graphs = {
            DEVELOPMENT_GRAPH: build_development_graph(self.development, self.queue),
            DEVOPS_GRAPH: build_devops_graph(self.devops),
        }
        parts = (self.rows, self.workers, self.engineering, self.deploys, self.chats)
        # The real pools (each test's own: they run on its queue).
        turns = TurnActivities(Settings(), self.client, None)
        plugin = LangGraphPlugin(graphs=graphs)
        stand_ins = [stand_in for part in parts for stand_in in activities_of(part)]
        worker = Worker(
            self.client,
            task_queue=self.queue,
            workflows=WORKFLOWS,
            activities=[*stand_ins, turns.ask_for_turn, turns.reap_turns],
            workflow_runner=workflow_runner(),
            plugins=[plugin],
            interceptors=[NoChildSearchAttributes()],
        )
        # One host with every capability: every stand-in and node on each capability's queue.
        on_containers, on_ansible = (
            Worker(
                self.client,
                task_queue=capability_queue(self.queue, capability),
                activities=[*stand_ins, *plugin.activities],
            )
            for capability in (CONTAINERS, ANSIBLE)
        )
        async with worker, on_containers, on_ansible:
            try:
                yield self
            finally:
                self.log.release_all()
                await self._close_runs()

    async def _close_runs(self) -> None:
        """Cancel what still runs and let it end: a run the worker drops mid-await leaves a
        coroutine that complains when it is collected."""
        for handle in self._handles:
            with contextlib.suppress(Exception):
                if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                    await handle.cancel()
                    await asyncio.wait_for(handle.result(), WITHIN_S)
        pools = (WORKERS_POOL, PO_WORKERS_POOL, deploy_pool(self.project_id))
        await end_pools(self.client, [turns_workflow_id(self.queue, pool) for pool in pools])

    # --- starting runs ---------------------------------------------------------------------

    async def start_engineering(self) -> WorkflowHandle[Any, EngineeringOutput]:
        handle = await self.client.start_workflow(
            EngineeringWorkflow.run,
            EngineeringInput(task_id=self.task_id, project_id=self.project_id, user_id="user-1"),
            id=engineering_workflow_id(self.task_id),
            task_queue=self.queue,
        )
        self._handles.append(handle)
        return handle

    async def start_scaffold(self) -> WorkflowHandle[Any, ScaffoldResult]:
        """The project's scaffold run as ``scaffolder:queue`` starts it."""
        handle = await self.client.start_workflow(
            ScaffoldWorkflow.run,
            ScaffoldInput(project_id=self.project_id, project_name="shop"),
            id=scaffold_workflow_id(self.project_id),
            task_queue=self.queue,
        )
        self._handles.append(handle)
        return handle

    async def start_deploy(self, task_id: str | None = None) -> WorkflowHandle[Any, DeployOutput]:
        """The deploy task (another of the same project with ``task_id``)."""
        task_id = task_id or self.task_id
        handle = await self.client.start_workflow(
            DeployWorkflow.run,
            DeployInput(
                task_id=task_id,
                project_id=self.project_id,
                user_id="user-1",
                action=self.deploys.plan.action,
            ),
            id=deploy_workflow_id(task_id),
            task_queue=self.queue,
        )
        self._handles.append(handle)
        return handle

    async def send(self, message_id: int, text: str) -> str:
        """A chat message as the API delivers it: update-with-start of the chat's session."""
        if not self._handles:
            self._handles.append(self.po_session())
        return await send_po_message(
            self.client,
            self.session,
            POMessage(message_id=message_id, text=text, user_id="user-1"),
            task_queue=self.queue,
        )

    async def turns(self, pool: str) -> TurnsState:
        """The state of this test's pool ``pool`` (an empty one before anyone asked)."""
        handle = self.client.get_workflow_handle(turns_workflow_id(self.queue, pool))
        try:
            return await handle.query(TURNS_STATE, result_type=TurnsState)
        except RPCError:
            return TurnsState(pool=pool, limit=1)

    async def turn_given_back(self, pool: str) -> None:
        """Until nobody holds or waits for a turn of ``pool``."""

        async def empty() -> bool:
            state = await self.turns(pool)
            return not (state.holding or state.waiting)

        await eventually(empty, f"every turn of {pool} given back", within=WITHIN_S)

    def po_session(self) -> WorkflowHandle[Any, POSessionOutput]:
        return self.client.get_workflow_handle(
            po_session_workflow_id(self.chat_id), result_type=POSessionOutput
        )


async def history(handle: WorkflowHandle[Any, Any]) -> list[HistoryEvent]:
    return [event async for event in handle.fetch_history_events()]


ACTIVITY_ENDS = (
    "activity_task_completed_event_attributes",
    "activity_task_failed_event_attributes",
    "activity_task_canceled_event_attributes",
    "activity_task_timed_out_event_attributes",
)


async def cancelled_activities_ended(handle: WorkflowHandle[Any, Any]) -> bool:
    """Every activity the run asked to cancel has ended in its history."""
    cancelled, ended = set(), set()
    for event in await history(handle):
        kind = event.WhichOneof("attributes")
        if kind == "activity_task_cancel_requested_event_attributes":
            cancelled.add(event.activity_task_cancel_requested_event_attributes.scheduled_event_id)
        elif kind in ACTIVITY_ENDS:
            ended.add(getattr(event, kind).scheduled_event_id)
    return bool(cancelled) and cancelled <= ended


async def failure_of(handle: WorkflowHandle[Any, Any]) -> BaseException:
    """Why the run failed (the workflow's own error, or a CancelledError)."""
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    cause = failed.value.cause
    assert cause is not None
    return cause
