"""EngineeringWorkflow: one engineering task, from QUEUED to a terminal status.

Stages: scaffold (the project's repository, once per project, as the child ``scaffold-{project}``),
then the development graph (workflows/development.py, LangGraph through temporalio-langgraph) in
one Worker container of the task: the agent works on ``task/{task_id}`` in a checkout mounted at
/workspace, the project's ``make test`` runs in the same Worker, failures go back to the agent
within the task's limits, then commit, push and pull request. A blocked agent's question moves
the task to WAITING_HUMAN until the ``respond`` update brings a person's answer. With no agent
available the task fails after the scaffold stage, saying how to configure one.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, FailureError, WorkflowAlreadyStartedError

from workflows.policies import (
    DB_RETRY,
    GIT_TIMEOUT,
    QUICK,
    QUICK_RETRY,
    SCAFFOLD_SIGNAL_WAIT,
    WAIT_FOR_RUN_HEARTBEAT,
    WAIT_FOR_RUN_RETRY,
    WAIT_FOR_RUN_TIMEOUT,
)
from workflows.scaffold import ScaffoldWorkflow
from workflows.toolkit import (
    TakesTurns,
    TaskRun,
    WaitsForPerson,
    close_gateway,
    gateway_was_opened,
    host_with,
    signal_run,
)

with workflow.unsafe.imports_passed_through():
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.types import Command
    from temporalio.langgraph import graph as langgraph_graph

    from activities.development import DEVELOPER, PULL_REQUEST, TESTER, DevelopmentState
    from activities.engineering import EngineeringActivities, TaskPlan, WorkspaceInput
    from activities.gateway import GatewayActivities
    from activities.tasks import ProjectInfo, TaskActivities
    from activities.temporal import TemporalActivities
    from activities.workers import CreateContainerInput
    from core.contracts.agents import TaskUsage, uses_model
    from core.contracts.engineering import EngineeringResult
    from core.contracts.scaffolder import ScaffoldResult
    from core.contracts.workflows import (
        ENGINEERING_WORKFLOW,
        SCAFFOLD_ENDED,
        SCAFFOLD_NOTIFY,
        WORKERS_POOL,
        EngineeringInput,
        EngineeringOutput,
        ScaffoldEnded,
        ScaffoldInput,
    )
    from core.enums import EventType, TaskStatus
    from core.ids import scaffold_workflow_id
    from core.task_queues import CONTAINERS
    from core.temporal import search_attributes
    from workflows.development import DEVELOPMENT_GRAPH

SCAFFOLD = "scaffold"
# Runs from before these changes took their old branches; no run needs them any more. New runs
# record them as deprecated markers, which runs with the old markers still replay against; once
# no run from before this code is open, the calls can go.
RETIRED_PATCHES = (
    "engineering-development-graph",
    "engineering-close-gateway",
    "engineering-free-worker-while-waiting",
)
# Runs from before it waited for a scaffold under way in an activity; new runs ask the scaffold
# run to signal its end and wait in workflow code.
SCAFFOLD_WAIT_PATCH = "engineering-waits-for-scaffold-signal"
# Runs from before it removed the Worker before recording the task's end; new runs record the
# end first (a person hears of the pull request sooner) and remove the Worker right after.
REMOVE_AFTER_FINISH_PATCH = "engineering-removes-worker-after-finish"


class StageFailed(ApplicationError):
    def __init__(self, message: str) -> None:
        super().__init__(message, type="StageFailed", non_retryable=True)


@workflow.defn(name=ENGINEERING_WORKFLOW)
class EngineeringWorkflow(WaitsForPerson, TakesTurns):
    def __init__(self) -> None:
        self._task_id = ""
        self._stages: list[str] = []
        self._task = TaskRun("", failure_type="EngineeringFailed")
        self._scaffold_ended: ScaffoldEnded | None = None
        self._leftover_worker: str | None = None

    @workflow.run
    async def run(self, request: EngineeringInput) -> EngineeringOutput:
        self._task_id = request.task_id
        self._task = TaskRun(request.task_id, failure_type="EngineeringFailed")
        result = await self._task.run(
            lambda: self._work(request), finally_=self._remove_leftover_worker
        )
        if result is None:
            return EngineeringOutput(task_id=request.task_id, status=self._task.status)
        return EngineeringOutput(
            task_id=request.task_id, status=TaskStatus.completed, result=result
        )

    async def _work(
        self, request: EngineeringInput
    ) -> tuple[EngineeringResult, str, dict[str, Any]]:
        result = await self._pipeline(request)
        ran = ", ".join(self._stages) or "none"
        spent = ""
        if result.tokens_in or result.tokens_out:
            spent = f"; {result.tokens_in + result.tokens_out} model tokens, ${result.cost_usd:.4f}"
        message = (
            f"Pull request {result.pr_url} opened after {result.rounds} round(s) by "
            f"the {result.agent} agent (ran: {ran}{spent})"
        )
        return result, message, result.model_dump(mode="json")

    async def _pipeline(self, request: EngineeringInput) -> EngineeringResult:
        project = await workflow.execute_activity_method(
            TaskActivities.get_project,
            request.project_id,
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
            summary=f"Load project {request.project_id}",
        )
        repository = project.repository
        full_name = project.repo_full_name
        if repository:
            await self._event(
                EventType.progress,
                f"The project already has its repository ({repository}); scaffolding skipped",
                stage=SCAFFOLD,
                progress=0.3,
            )
        else:
            await self._event(
                EventType.stage_started,
                "Creating the project's repository from the service template",
                stage=SCAFFOLD,
                progress=0.1,
            )
            scaffold = await self._scaffold(project, request)
            self._stages.append(SCAFFOLD)
            repository = scaffold.repository
            full_name = scaffold.repo_full_name
            made = "Created" if scaffold.created else "Found the existing"
            await self._event(
                EventType.stage_completed,
                f"{made} repository {scaffold.repo_full_name} at {scaffold.repository}",
                stage=SCAFFOLD,
                progress=0.3,
                data=scaffold.model_dump(mode="json"),
            )
        workflow.deprecate_patch(RETIRED_PATCHES[0])
        plan = await workflow.execute_activity_method(
            EngineeringActivities.plan_task,
            request.task_id,
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
            summary="Read the task's plan",
        )
        if plan.agent is None:
            raise StageFailed(plan.no_agent or "no coding agent is configured")
        if not (repository and full_name):
            raise StageFailed(f"project {project.name} has no repository to work in")
        return await self._develop(request, plan, repository, full_name)

    # --- developer -> tester -> pull request: the development graph ----------------------------

    async def _develop(
        self, request: EngineeringInput, plan: TaskPlan, repository: str, full_name: str
    ) -> EngineeringResult:
        branch = f"task/{request.task_id}"
        workspace = await workflow.execute_activity_method(
            EngineeringActivities.prepare_workspace,
            WorkspaceInput(task_id=request.task_id, repository=repository, branch=branch),
            # The Worker mounts the checkout from its host's disk.
            task_queue=host_with(CONTAINERS),
            start_to_close_timeout=GIT_TIMEOUT,
            retry_policy=QUICK_RETRY,
            summary=f"Check out {branch}",
        )
        worker_id = f"{request.task_id}-developer"
        state: DevelopmentState = {
            "task_id": request.task_id,
            "project_id": request.project_id,
            "repo_full_name": full_name,
            "worker_id": worker_id,
            "workspace": workspace.path,
            "base_sha": workspace.base_sha,
            "branch": branch,
            "agent": str(plan.agent),
            "agent_options": plan.agent_options,
            "model": plan.model,
            "instructions": plan.instructions,
            "prompt": plan.prompt,
            "max_rounds": plan.max_rounds,
            "budget": plan.budget.model_dump(),
            "deadline": (workflow.now() + timedelta(minutes=plan.max_minutes)).isoformat(),
            "turns": 0,
            "rounds": 0,
        }
        worker = CreateContainerInput(
            worker_id=worker_id,
            task_id=request.task_id,
            # This run owns the container: the reaper removes it once the run closes.
            workflow_id=workflow.info().workflow_id,
            agent=str(plan.agent),
            workspace=workspace.path,
            budget=plan.budget,
            project_id=request.project_id,
        )
        try:
            await self._create_worker(worker)
            final = await self._run_graph(state, worker)
        except BaseException:
            # Also after a cancellation: the container must not outlive the task's work.
            await self._remove_worker(worker_id)
            await self._close_gateway(str(plan.agent))
            raise
        if workflow.patched(REMOVE_AFTER_FINISH_PATCH):
            # The work is done: the gateway closes now (the task's model usage is then final),
            # and the Worker goes once the task's end is recorded (_remove_leftover_worker).
            await self._close_gateway(str(plan.agent))
            self._leftover_worker = worker_id
        else:
            await self._remove_worker(worker_id)
            await self._close_gateway(str(plan.agent))
        for stage in (DEVELOPER, TESTER, PULL_REQUEST):
            if _ran(stage, final):
                self._stages.append(stage)
        if final.get("failure"):
            raise StageFailed(str(final["failure"]))
        pull = final.get("pull") or {}
        usage = await self._usage(plan)
        return EngineeringResult(
            files_changed=final.get("files_changed") or [],
            commit_sha=final.get("commit_sha"),
            branch=branch,
            pr_url=pull.get("url"),
            repository=repository,
            stages=list(self._stages),
            rounds=final["rounds"],
            agent=plan.agent,
            tokens_in=usage.tokens_in,
            tokens_out=usage.tokens_out,
            cost_usd=usage.cost_usd,
        )

    async def _create_worker(self, worker: CreateContainerInput) -> None:
        summary = f"Create the {worker.agent} Worker {worker.worker_id}"
        await self.create_worker_in_turn(WORKERS_POOL, worker, summary)

    async def _remove_worker(self, worker_id: str) -> None:
        await self.remove_worker_and_turn(WORKERS_POOL, worker_id, f"Remove the Worker {worker_id}")

    async def _remove_leftover_worker(self) -> None:
        """The Worker of a run whose graph ended, once the task's end is recorded (also after a
        cancel or a failure that came since). Failing here fails no task: the reaper removes
        what a closed run leaves, and gives back its turn."""
        if self._leftover_worker is None:
            return
        worker_id, self._leftover_worker = self._leftover_worker, None
        try:
            await self._remove_worker(worker_id)
        except FailureError as failure:
            workflow.logger.warning("Worker %s left to the reaper: %s", worker_id, failure)

    async def _close_gateway(self, agent: str) -> None:
        if uses_model(agent):
            workflow.deprecate_patch(RETIRED_PATCHES[1])
            await close_gateway(self._task_id, "Close the task's model gateway")
        elif gateway_was_opened(agent):
            await close_gateway(self._task_id, "Close the task's gateway")

    async def _run_graph(
        self, state: DevelopmentState, worker: CreateContainerInput
    ) -> dict[str, Any]:
        """Run the development graph; each interrupt is a question the task waits on.

        While it waits (hours, days) the task gives its Worker and slot back: the workspace
        stays on the host, and a new Worker takes it up with the answer.
        """
        app = langgraph_graph(DEVELOPMENT_GRAPH).compile(checkpointer=InMemorySaver())
        config: Any = {"configurable": {"thread_id": self._task_id}, "recursion_limit": 500}
        result: dict[str, Any] = await app.ainvoke(state, config)
        while result.get("__interrupt__"):
            question = str(result["__interrupt__"][0].value["question"])
            asked = workflow.now()
            workflow.deprecate_patch(RETIRED_PATCHES[2])
            await self._remove_worker(worker.worker_id)
            answer = await self.wait_for_person(question, stage=DEVELOPER)
            await self._create_worker(worker)
            waited = (workflow.now() - asked).total_seconds()
            result = await app.ainvoke(
                Command(resume={"answer": answer.answer, "waited_s": waited}), config
            )
        return result

    async def _usage(self, plan: TaskPlan) -> TaskUsage:
        if plan.agent is None or not uses_model(plan.agent):
            return TaskUsage(task_id=self._task_id)
        return await workflow.execute_activity_method(
            GatewayActivities.gateway_usage,
            self._task_id,
            start_to_close_timeout=QUICK,
            retry_policy=QUICK_RETRY,
            summary="Model usage of the task",
        )

    async def _scaffold(self, project: ProjectInfo, request: EngineeringInput) -> ScaffoldResult:
        child_id = scaffold_workflow_id(project.id)
        try:
            return await workflow.execute_child_workflow(
                ScaffoldWorkflow.run,
                ScaffoldInput(
                    project_id=project.id,
                    project_name=project.name,
                    modules=project.modules,
                    correlation_id=request.correlation_id,
                ),
                id=child_id,
                # Once per project: a failed scaffold may run again, a finished one may not.
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                search_attributes=search_attributes(project_id=project.id),
                static_summary=f"Scaffold the repository of {project.name}",
            )
        except WorkflowAlreadyStartedError:
            # Another task or scaffolder:queue got there first: wait for that run instead.
            await self._event(
                EventType.progress,
                f"Scaffolding is already under way in {child_id}; waiting for it",
                stage=SCAFFOLD,
                progress=0.1,
            )
            if workflow.patched(SCAFFOLD_WAIT_PATCH) and await self._ask_scaffold_to_tell(child_id):
                return await self._scaffold_told(child_id)
            return await self._scaffold_result(child_id)

    async def _ask_scaffold_to_tell(self, child_id: str) -> bool:
        """Ask the scaffold run to signal its end; False when it closed already."""
        try:
            await signal_run(child_id, SCAFFOLD_NOTIFY, workflow.info().workflow_id)
        except FailureError:
            return False
        return True

    async def _scaffold_told(self, child_id: str) -> ScaffoldResult:
        """Wait in workflow code (no activity) for the run to signal its end."""
        try:
            await workflow.wait_condition(
                lambda: self._scaffold_ended is not None, timeout=SCAFFOLD_SIGNAL_WAIT
            )
        except TimeoutError:  # the run closed as it was asked: its result is there to read
            return await self._scaffold_result(child_id)
        ended = self._scaffold_ended
        assert ended is not None
        if ended.result is None:
            raise StageFailed(f"the scaffold run {child_id} did not succeed: {ended.error}")
        return ended.result

    @workflow.signal(name=SCAFFOLD_ENDED)
    def scaffold_ended(self, ended: ScaffoldEnded) -> None:
        self._scaffold_ended = ended

    async def _scaffold_result(self, child_id: str) -> ScaffoldResult:
        """The run's result, read by an activity that waits for it (runs from before
        ``SCAFFOLD_WAIT_PATCH`` waited so all along)."""
        return await workflow.execute_activity_method(
            TemporalActivities.wait_for_scaffold,
            child_id,
            start_to_close_timeout=WAIT_FOR_RUN_TIMEOUT,
            heartbeat_timeout=WAIT_FOR_RUN_HEARTBEAT,
            retry_policy=WAIT_FOR_RUN_RETRY,
            summary=f"Wait for {child_id}",
        )

    async def _event(
        self,
        type: EventType,
        message: str,
        *,
        stage: str | None = None,
        progress: float | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        await self._task.event(type, message, stage=stage, progress=progress, data=data)


def _ran(stage: str, final: dict[str, Any]) -> bool:
    if stage == DEVELOPER:
        return bool(final.get("turns"))
    if stage == TESTER:
        return bool(final.get("rounds"))
    return bool(final.get("pull"))
