"""EngineeringWorkflow: one engineering task, from QUEUED to a terminal status.

Stages: scaffold (the project's repository, once per project, as the child ``scaffold-{project}``),
then, when the task names an agent (for now: a spec carrying a ``scripted`` agent's script, see
activities/engineering.py), the developer / tester loop in one Worker container of the task:
the agent works on ``task/{task_id}`` in a checkout mounted at /workspace, the project's
``make test`` runs in the same Worker, and failures go back to the agent, at most ``max_rounds``
agent turns (checked before each turn). Then commit, push and pull request in the forge.
A task with no agent wired says so in its events; its result lists only the stages that ran.

Runs started before the developer stages existed replay through ``engineering-developer-stages``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import (
    ApplicationError,
    FailureError,
    WorkflowAlreadyStartedError,
    is_cancelled_exception,
)

from workflows.scaffold import DB_RETRY, ScaffoldWorkflow, describe_failure

with workflow.unsafe.imports_passed_through():
    from activities.engineering import (
        CommitInput,
        EngineeringActivities,
        RunTestsInput,
        TaskPlan,
        TestReport,
        WorkspaceInput,
    )
    from activities.forge import OpenPullRequestInput, PullRequestActivities, TestOutcome
    from activities.tasks import (
        FinishTaskInput,
        ProjectInfo,
        StartTaskResult,
        TaskActivities,
        TaskEventInput,
    )
    from activities.temporal import TemporalActivities
    from activities.workers import AgentTurnInput, CreateContainerInput, WorkerActivities
    from core.contracts.engineering import EngineeringResult
    from core.contracts.events import EventType, TaskStatus
    from core.contracts.scaffolder import ScaffoldResult
    from core.ids import scaffold_workflow_id
    from core.temporal import search_attributes
    from workflows.io import (
        ENGINEERING_WORKFLOW,
        EngineeringInput,
        EngineeringOutput,
        ScaffoldInput,
    )

SCAFFOLD = "scaffold"
NOT_INSTALLED = (
    "The developer, tester and pull-request stages are not installed yet: "
    "no code was written, tested or proposed for this task."
)
DEVELOPER_PATCH = "engineering-developer-stages"
DEVELOPER, TESTER, PULL_REQUEST = "developer", "tester", "pull_request"
QUICK = timedelta(seconds=30)
QUICK_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10), maximum_attempts=10)
# Making the container may build its image first (minutes on a fresh machine).
CREATE_TIMEOUT = timedelta(minutes=20)
TURN_TIMEOUT_S = 600.0
TEST_TIMEOUT_S = 600.0
# A turn or a test run plays again after a worker crash (the heartbeat stops), not forever.
RUN_RETRY = RetryPolicy(
    maximum_attempts=3,
    non_retryable_error_types=["BadWorkerInput", "WorkerNotFound", "BadSpec", "TaskNotFound"],
)


class StageFailed(ApplicationError):
    def __init__(self, message: str) -> None:
        super().__init__(message, type="StageFailed", non_retryable=True)


@workflow.defn(name=ENGINEERING_WORKFLOW)
class EngineeringWorkflow:
    def __init__(self) -> None:
        self._task_id = ""
        self._stages: list[str] = []
        self._developed = False

    @workflow.run
    async def run(self, request: EngineeringInput) -> EngineeringOutput:
        self._task_id = request.task_id
        try:
            started = await self._start()
            if not started.should_run:
                workflow.logger.info(
                    "task %s is %s; nothing to do", request.task_id, started.status
                )
                return EngineeringOutput(task_id=request.task_id, status=started.status)
            result = await self._pipeline(request)
            ran = ", ".join(self._stages) or "none"
            if self._developed:
                message = (
                    f"Pull request {result.pr_url} opened after {result.rounds} round(s) "
                    f"(ran: {ran})"
                )
            else:
                message = f"Finished the stages that exist (ran: {ran}). {NOT_INSTALLED}"
            await self._finish(TaskStatus.completed, message, result=result.model_dump(mode="json"))
        except (asyncio.CancelledError, FailureError) as error:
            if is_cancelled_exception(error):
                await self._finish(TaskStatus.cancelled, "The task was cancelled")
                raise  # the run shows Cancelled
            reason = describe_failure(error)
            await self._finish(TaskStatus.failed, f"The task failed: {reason}", error=reason)
            # Non-retryable: the run shows Failed with the reason instead of starting over.
            raise ApplicationError(reason, type="EngineeringFailed", non_retryable=True) from error
        return EngineeringOutput(
            task_id=request.task_id, status=TaskStatus.completed, result=result
        )

    async def _pipeline(self, request: EngineeringInput) -> EngineeringResult:
        project = await workflow.execute_activity_method(
            TaskActivities.get_project,
            request.project_id,
            start_to_close_timeout=timedelta(seconds=30),
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
        if workflow.patched(DEVELOPER_PATCH):
            plan = await workflow.execute_activity_method(
                EngineeringActivities.plan_task,
                request.task_id,
                start_to_close_timeout=QUICK,
                retry_policy=DB_RETRY,
                summary="Read the task's plan",
            )
            if plan.agent is not None and repository and full_name:
                self._developed = True
                return await self._develop(request, plan, repository, full_name)
        await self._event(EventType.progress, NOT_INSTALLED, progress=0.3)
        return EngineeringResult(repository=repository, stages=list(self._stages))

    # --- developer -> tester -> pull request ---------------------------------------------------

    async def _develop(
        self, request: EngineeringInput, plan: TaskPlan, repository: str, full_name: str
    ) -> EngineeringResult:
        branch = f"task/{request.task_id}"
        workspace = await workflow.execute_activity_method(
            EngineeringActivities.prepare_workspace,
            WorkspaceInput(task_id=request.task_id, repository=repository, branch=branch),
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=QUICK_RETRY,
            summary=f"Check out {branch}",
        )
        worker_id = f"{request.task_id}-developer"
        try:
            await workflow.execute_activity_method(
                WorkerActivities.create_container,
                CreateContainerInput(
                    worker_id=worker_id,
                    task_id=request.task_id,
                    # This run owns the container: the reaper removes it once the run closes.
                    workflow_id=workflow.info().workflow_id,
                    agent=str(plan.agent),
                    workspace=workspace.path,
                ),
                start_to_close_timeout=CREATE_TIMEOUT,
                heartbeat_timeout=timedelta(minutes=2),
                retry_policy=RUN_RETRY,
                summary=f"Create the {plan.agent} Worker {worker_id}",
            )
            rounds, report = await self._rounds(request, plan, worker_id)
        finally:
            # Also after a cancellation: the container must not outlive the task's work.
            await workflow.execute_activity_method(
                WorkerActivities.remove_container,
                worker_id,
                start_to_close_timeout=QUICK,
                retry_policy=QUICK_RETRY,
                summary=f"Remove the Worker {worker_id}",
            )
        commit = await workflow.execute_activity_method(
            EngineeringActivities.commit_workspace,
            CommitInput(
                path=workspace.path,
                base_sha=workspace.base_sha,
                message=f"Task {request.task_id}: the agent's remaining changes",
            ),
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=QUICK_RETRY,
            summary=f"Commit {branch}",
        )
        await self._event(
            EventType.stage_started,
            f"Pushing {branch} and opening its pull request",
            stage=PULL_REQUEST,
            progress=0.9,
        )
        pull = await workflow.execute_activity_method(
            PullRequestActivities.open_pull_request,
            OpenPullRequestInput(
                project_id=request.project_id,
                task_id=request.task_id,
                repo_full_name=full_name,
                branch=branch,
                title=f"Task {request.task_id}",
                body=f"Written by the {plan.agent} agent in {rounds} round(s); {report.summary}.",
                test_outcome=TestOutcome(
                    passed=report.tests_run - report.failures - report.errors - report.skipped,
                    failed=report.failures,
                    errors=report.errors,
                    skipped=report.skipped,
                    summary=report.summary,
                ),
                worktree=workspace.path,
            ),
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=QUICK_RETRY,
            summary=f"Open the pull request of {branch}",
        )
        self._stages.append(PULL_REQUEST)
        await self._event(
            EventType.stage_completed,
            f"Pull request #{pull.number} opened: {pull.url}",
            stage=PULL_REQUEST,
            progress=0.95,
            data={"number": pull.number, "url": pull.url, "head_sha": pull.head_sha},
        )
        return EngineeringResult(
            files_changed=commit.files_changed,
            commit_sha=pull.head_sha or commit.commit_sha,
            branch=branch,
            pr_url=pull.url,
            repository=repository,
            stages=list(self._stages),
            rounds=rounds,
        )

    async def _rounds(
        self, request: EngineeringInput, plan: TaskPlan, worker_id: str
    ) -> tuple[int, TestReport]:
        """Agent turn, then tests, until they pass; the round limit is checked before each turn."""
        prompt = plan.prompt
        rounds = 0
        report: TestReport | None = None
        while True:
            if rounds >= plan.max_rounds:
                raise StageFailed(
                    f"the tests still fail after {rounds} round(s), the task's limit"
                    + (f": {report.summary}" if report else "")
                )
            rounds += 1
            progress = min(0.3 + 0.15 * rounds, 0.85)
            await self._event(
                EventType.stage_started,
                f"Round {rounds}: the {plan.agent} agent works on the task",
                stage=DEVELOPER,
                progress=progress,
                data={"round": rounds},
            )
            result = await workflow.execute_activity_method(
                WorkerActivities.run_agent_turn,
                AgentTurnInput(
                    worker_id=worker_id,
                    task_id=request.task_id,
                    agent=str(plan.agent),
                    prompt=prompt,
                    agent_options=plan.agent_options,
                    timeout_s=TURN_TIMEOUT_S,
                ),
                start_to_close_timeout=timedelta(seconds=TURN_TIMEOUT_S + 60),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=RUN_RETRY,
                summary=f"Round {rounds}: agent turn",
            )
            if result.status == "blocked":
                # Not resumable yet (WAITING_HUMAN is to come): the question ends the task.
                raise StageFailed(f"the agent is blocked in round {rounds}: {result.question}")
            if result.status != "completed":
                raise StageFailed(f"the agent failed in round {rounds}: {result.raw_error}")
            if DEVELOPER not in self._stages:
                self._stages.append(DEVELOPER)
            await self._event(
                EventType.stage_completed,
                f"Round {rounds}: the agent is done: {result.summary}",
                stage=DEVELOPER,
                progress=progress,
                data={"round": rounds, "files_changed": result.files_changed},
            )
            report = await self._test(worker_id, rounds, progress)
            if report.passed:
                return rounds, report
            prompt = (
                f"{plan.prompt}\n\nThe tests fail ({report.summary}): "
                f"{', '.join(report.failing_tests) or 'see the output'}.\n{report.output}"
            )

    async def _test(self, worker_id: str, rounds: int, progress: float) -> TestReport:
        await self._event(
            EventType.stage_started,
            f"Round {rounds}: running the project's tests",
            stage=TESTER,
            progress=progress,
            data={"round": rounds},
        )
        report = await workflow.execute_activity_method(
            EngineeringActivities.run_tests,
            RunTestsInput(worker_id=worker_id, timeout_s=TEST_TIMEOUT_S),
            start_to_close_timeout=timedelta(seconds=TEST_TIMEOUT_S + 60),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=RUN_RETRY,
            summary=f"Round {rounds}: make test",
        )
        if TESTER not in self._stages:
            self._stages.append(TESTER)
        failing = ", ".join(report.failing_tests)
        verdict = "pass" if report.passed else "fail" + (f": {failing}" if failing else "")
        await self._event(
            EventType.stage_completed,
            f"Round {rounds}: the tests {verdict} ({report.summary})",
            stage=TESTER,
            progress=progress,
            data={"round": rounds, **report.model_dump(exclude={"output"})},
        )
        return report

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
            return await workflow.execute_activity_method(
                TemporalActivities.wait_for_scaffold,
                child_id,
                start_to_close_timeout=timedelta(hours=1),
                heartbeat_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
                summary=f"Wait for {child_id}",
            )

    async def _start(self) -> StartTaskResult:
        return await workflow.execute_activity_method(
            TaskActivities.start_task,
            self._task_id,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=DB_RETRY,
            summary="Mark the task RUNNING",
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
        await workflow.execute_activity_method(
            TaskActivities.record_event,
            TaskEventInput(
                task_id=self._task_id,
                type=type,
                message=message,
                stage=stage,
                progress=progress,
                data=data or {},
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=DB_RETRY,
            summary=f"Event {type.value}" + (f" ({stage})" if stage else ""),
        )

    async def _finish(
        self,
        status: TaskStatus,
        message: str,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        try:
            await workflow.execute_activity_method(
                TaskActivities.finish_task,
                FinishTaskInput(
                    task_id=self._task_id,
                    status=status,
                    message=message,
                    result=result,
                    error=error,
                ),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=DB_RETRY,
                summary=f"Mark the task {status.value}",
            )
        except FailureError as failure:
            if status is TaskStatus.completed:
                raise
            # Already failing or cancelled: report that first problem, not this second one.
            workflow.logger.warning("could not record %s: %s", status, describe_failure(failure))
