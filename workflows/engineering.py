"""EngineeringWorkflow: one engineering task, from QUEUED to a terminal status.

Stages: scaffold (the project's repository, once per project, as the child ``scaffold-{project}``).
The developer, tester and pull-request stages are not installed yet; the workflow says so in the
task's events and its result lists only the stages that really ran.
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
    from activities.tasks import (
        FinishTaskInput,
        ProjectInfo,
        StartTaskResult,
        TaskActivities,
        TaskEventInput,
    )
    from activities.temporal import TemporalActivities
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


@workflow.defn(name=ENGINEERING_WORKFLOW)
class EngineeringWorkflow:
    def __init__(self) -> None:
        self._task_id = ""
        self._stages: list[str] = []

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
            await self._finish(
                TaskStatus.completed,
                f"Finished the stages that exist (ran: {ran}). {NOT_INSTALLED}",
                result=result.model_dump(mode="json"),
            )
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
            made = "Created" if scaffold.created else "Found the existing"
            await self._event(
                EventType.stage_completed,
                f"{made} repository {scaffold.repo_full_name} at {scaffold.repository}",
                stage=SCAFFOLD,
                progress=0.3,
                data=scaffold.model_dump(mode="json"),
            )
        await self._event(EventType.progress, NOT_INSTALLED, progress=0.3)
        return EngineeringResult(repository=repository, stages=list(self._stages))

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
