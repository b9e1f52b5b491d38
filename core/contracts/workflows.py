"""Inputs and outputs of the workflows: one pydantic model each, shared with their starters."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from core.contracts.agents import AgentResult
from core.contracts.deploy import AnsibleDeployMessage, AnsibleDeployResult, DeployResult
from core.contracts.engineering import EngineeringResult
from core.contracts.events import TASK_QUESTION, TASK_RESPOND
from core.contracts.scaffolder import ScaffoldResult
from core.enums import DeployAction, EngineeringAction, ServerStatus, TaskStatus

ENGINEERING_WORKFLOW = "EngineeringWorkflow"
__all__ = ["TASK_QUESTION", "TASK_RESPOND"]  # defined with the contracts
SCAFFOLD_WORKFLOW = "ScaffoldWorkflow"


class EngineeringInput(BaseModel):
    task_id: str
    project_id: str
    user_id: str
    action: EngineeringAction = EngineeringAction.feature
    skip_deploy: bool = True
    correlation_id: str | None = None
    callback_stream: str | None = None


class EngineeringOutput(BaseModel):
    task_id: str
    status: TaskStatus
    result: EngineeringResult | None = None
    error: str | None = None


class ScaffoldInput(BaseModel):
    project_id: str
    repo_full_name: str | None = Field(
        default=None, description="owner/name; derived from the project when absent"
    )
    project_name: str | None = None
    modules: list[str] = Field(default_factory=list)
    correlation_id: str | None = None


ScaffoldOutput = ScaffoldResult

# A signal to a scaffold run: "tell this workflow id when you end" (a task that found the
# project's scaffold under way waits for it in workflow code); the run answers each with the
# signal SCAFFOLD_ENDED.
SCAFFOLD_NOTIFY = "notify_when_ended"
SCAFFOLD_ENDED = "scaffold_ended"


class ScaffoldEnded(BaseModel):
    result: ScaffoldResult | None = None
    error: str | None = Field(default=None, description="Why it did not succeed")


# --- Provisioning (workflows/provision.py) ------------------------------------------------------

PROVISION_WORKFLOW = "ProvisionWorkflow"


class ProvisionInput(BaseModel):
    server_handle: str
    request_id: str = Field(description="The message's; its result goes to provisioner:result:<id>")
    correlation_id: str | None = None
    force_reinstall: bool = Field(
        default=False, description="Install what deploys need (python3, tar, gzip) with apt-get"
    )
    is_recovery: bool = False


class ProvisionOutput(BaseModel):
    server_handle: str
    status: ServerStatus = Field(description="READY or FAILED")
    capacity: dict[str, Any] | None = Field(
        default=None, description="{memory_mb, cpus, disk_free_gb}, read from the server"
    )
    error: str | None = None


# --- Workers (workflows/worker.py) --------------------------------------------------------------

WORKER_WORKFLOW = "WorkerWorkflow"
# Updates: the caller waits for the outcome (a workflow or a client that can hold a connection).
WORKER_SEND_MESSAGE = "send_message"
WORKER_SEND_FILE = "send_file"
# Signals: fire and forget; the Worker publishes a WorkerResponse when ``reply`` says where
# (the bridge of ``worker:commands`` uses these, so it never waits for an agent).
WORKER_QUEUE_MESSAGE = "queue_message"
WORKER_QUEUE_FILE = "queue_file"
WORKER_DELETE = "delete"


class ReplyTo(BaseModel):
    """Where and how to answer a queued command with a ``WorkerResponse``."""

    request_id: str = Field(description="The command's request_id, repeated in the response")
    correlation_id: str
    streams: list[str] = Field(description="worker:responses, and the callback_stream if any")


class WorkerInput(BaseModel):
    worker_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    agent: str = Field(description="claude, codex, droid or scripted")
    task_id: str | None = Field(default=None, description="The task it works for; else its own")
    owner_workflow_id: str | None = Field(default=None, description="The workflow that made it")
    name: str | None = None
    image: str | None = Field(default=None, description="None: the agent's built image")
    workspace: str | None = Field(default=None, description="Host directory at /workspace")
    capabilities: list[str] = Field(default_factory=list)
    env_refs: dict[str, str] = Field(default_factory=dict)
    instructions: str | None = None
    model: str | None = None
    agent_options: dict[str, Any] = Field(
        default_factory=dict, description="Adapter options, e.g. the scripted agent's script"
    )
    idle_timeout_s: float = Field(default=1800.0, gt=0)
    budget_tokens: int | None = Field(default=None, gt=0)
    budget_cost_usd: float | None = Field(default=None, gt=0)
    reply: ReplyTo | None = Field(default=None, description="Answer the create command here")

    @property
    def effective_task_id(self) -> str:
        return self.task_id or self.worker_id


class WorkerMessage(BaseModel):
    message: str
    timeout_s: float = Field(default=600.0, gt=0)
    reply: ReplyTo | None = None


class WorkerFile(BaseModel):
    path: str = Field(description="Absolute, or relative to /workspace")
    content: str
    mode: int = 0o644
    reply: ReplyTo | None = None


class WorkerDelete(BaseModel):
    reply: ReplyTo | None = None


class WorkerAnswer(BaseModel):
    """What ``send_message`` returns: the agent's answer and its whole result."""

    worker_id: str
    response: str
    result: AgentResult


class WorkerOutput(BaseModel):
    worker_id: str
    reason: Literal["deleted", "idle"]
    turns: int = 0


# --- PO sessions (workflows/po_session.py) ------------------------------------------------------

PO_SESSION_WORKFLOW = "POSessionWorkflow"
# Update: one user message; returns the PO's reply text. Delivered with update-with-start.
PO_SEND = "send_message"
# Query: a POSessionStatus.
PO_STATUS = "status"
# Update: a message from a Worker's agent (``orchestrator respond``) to the chat; a POResponse.
PO_RESPOND = "respond"


class POMessage(BaseModel):
    """One user message of a chat; ``message_id`` (the chat's own) deduplicates redeliveries."""

    message_id: int
    text: str
    user_id: str | None = None


class POExchange(BaseModel):
    message_id: int
    text: str
    reply: str


class POResponse(BaseModel):
    """``orchestrator respond``: sent to the chat as a note, and kept in the conversation."""

    response_id: str
    text: str
    source: str | None = None


class POSessionInput(BaseModel):
    chat_id: int
    user_id: str | None = Field(
        default=None, description="The chat's user (orchestrator id): the PO's CLI acts as them"
    )
    agent: str | None = Field(
        default=None,
        description="claude, codex, droid or scripted; None: the worker's settings decide",
    )
    allowed_commands: str = Field(
        default="PRODUCT_OWNER", description="ALLOWED_COMMANDS of the PO's CLI"
    )
    model: str | None = None
    instructions: str | None = None
    agent_options: dict[str, Any] = Field(
        default_factory=dict, description="Adapter options, e.g. the scripted agent's script"
    )
    image: str | None = Field(default=None, description="None: the agent's built image")
    workspace: str | None = Field(default=None, description="Host directory at /workspace")
    idle_timeout_s: float = Field(
        default=1800.0, gt=0, description="No message this long: remove the Worker, end"
    )
    turn_timeout_s: float = Field(default=600.0, gt=0)
    max_turns_per_run: int = Field(
        default=50, gt=0, description="Continue-as-new after this many turns in one run"
    )
    # Carried over continue-as-new:
    summary: str | None = Field(default=None, description="The conversation before this run")
    replies: dict[int, str] = Field(
        default_factory=dict, description="Recent replies by message_id (oldest first)"
    )
    pending: list[POMessage] = Field(default_factory=list, description="Not yet answered")
    turns: int = Field(default=0, ge=0, description="Turns taken by earlier runs")


class POSessionStatus(BaseModel):
    chat_id: int
    turns: int = Field(description="Turns taken by the whole session")
    run_turns: int = Field(description="Turns taken by this run")
    current: int | None = Field(description="The message_id whose turn runs now")
    pending: list[int]
    container: bool
    summary: str | None
    exchanges: list[POExchange] = Field(description="This run's exchanges, in turn order")


class POSessionOutput(BaseModel):
    chat_id: int
    reason: Literal["idle"]
    turns: int
    summary: str | None = None


# --- Deploys (workflows/deploy.py, workflows/ansible_deploy.py) ---------------------------------

DEPLOY_WORKFLOW = "DeployWorkflow"
ANSIBLE_DEPLOY_WORKFLOW = "AnsibleDeployWorkflow"
# A deploy waiting for secrets answers ``respond`` (engineering's update: any answer means
# "look again") and the ``secrets_changed`` signal the API sends when a secret is set.


class DeployInput(BaseModel):
    task_id: str
    project_id: str
    user_id: str
    action: DeployAction = DeployAction.create
    correlation_id: str | None = None
    callback_stream: str | None = None


class DeployOutput(BaseModel):
    task_id: str
    status: TaskStatus
    result: DeployResult | None = None


# AnsibleDeployWorkflow takes the ``ansible:deploy:queue`` message as it is and returns the
# result it also publishes on ``deploy:result:{request_id}``.
AnsibleDeployInput = AnsibleDeployMessage
AnsibleDeployOutput = AnsibleDeployResult


# --- Turns: limited pools waited on in workflow code (workflows/turns.py) -------------------------

TURNS_WORKFLOW = "TurnsWorkflow"
# An update: a holder asks for a turn; answered at once, granted or queued.
TURNS_ASK = "ask"
# A signal: a holder gives its turn back, or leaves the queue.
TURNS_GIVE_BACK = "give_back"
TURNS_STATE = "state"
# The signal a TurnsWorkflow sends a queued holder's workflow when its turn comes.
TURN_GRANTED = "turn_granted"

# The pools: task Workers (ORCHESTRATOR_MAX_WORKERS), PO session Workers
# (ORCHESTRATOR_MAX_PO_WORKERS), and one deploy at a time per project.
WORKERS_POOL = "workers"
PO_WORKERS_POOL = "po-workers"
DEPLOY_POOL_PREFIX = "deploy-"


def deploy_pool(project_id: str) -> str:
    return f"{DEPLOY_POOL_PREFIX}{project_id}"


class Turn(BaseModel):
    holder: str = Field(description="The workflow id that holds (or waits for) the turn")
    key: str = Field(description="What the holder takes the turn for: a Worker id, a task id")
    task_id: str | None = Field(default=None, description="The task whose events tell the wait")
    asked_at: datetime
    granted_at: datetime | None = None


class TurnAsk(BaseModel):
    pool: str
    limit: int = Field(gt=0, description="The pool's size now (the latest ask sets it)")
    holder: str
    key: str
    task_id: str | None = None


class TurnAnswer(BaseModel):
    granted: bool
    in_use: int = Field(description="Turns held, this one included when granted")
    limit: int
    ahead: int = Field(default=0, description="Holders queued before this one")
    pool_workflow_id: str = Field(default="", description="Where to give the turn back")


class TurnGiveBack(BaseModel):
    holder: str
    key: str


class TurnsInput(BaseModel):
    """A pool's state: empty for a new pool, carried over when the workflow continues as new."""

    pool: str
    limit: int = Field(gt=0)
    holding: list[Turn] = Field(default_factory=list)
    waiting: list[Turn] = Field(default_factory=list)
    to_notify: list[Turn] = Field(
        default_factory=list, description="Granted turns whose holders are not told yet"
    )
    granted_total: int = 0


class TurnsState(TurnsInput):
    """What the ``state`` query answers: holders, the queue in order, turns granted so far."""


# --- Merging a pull request (workflows/pull_request_merge.py) -----------------------------------

PULL_REQUEST_MERGE_WORKFLOW = "PullRequestMergeWorkflow"


class PullRequestMergeInput(BaseModel):
    pull_request_id: str


class PullRequestMergeOutput(BaseModel):
    pull_request_id: str
    merged: bool = Field(description="The forge has it merged, and it is recorded")
    merge_commit_sha: str | None = None
    deploy_task_id: str | None = Field(
        default=None, description="The deploy the merge started (a project with auto-deploy)"
    )
    refused: str | None = Field(
        default=None,
        description="What the forge refused, no retry helping: PullRequestClosed, MergeConflict, "
        "PullRequestNotFound...",
    )
    error: str | None = Field(default=None, description="Why it did not merge")
