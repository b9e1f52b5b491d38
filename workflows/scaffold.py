"""ScaffoldWorkflow: a project's repository, made once from the project template.

Started as ``scaffold-{project_id}``, by the engineering workflow (as its child) or from
``scaffolder:queue``. The workflow code only decides; the activities do the I/O. Tasks that
found it under way ask to be told its end (``notify_when_ended``) and wait in their own workflow
code; each gets ``scaffold_ended`` with the result or why it failed.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    FailureError,
    is_cancelled_exception,
)

from workflows.policies import (
    DB_RETRY,
    FIND_REPOSITORY_RETRY,
    QUICK,
    SCAFFOLD_HEARTBEAT,
    SCAFFOLD_RETRY,
    SCAFFOLD_TIMEOUT,
)
from workflows.toolkit import describe_failure

with workflow.unsafe.imports_passed_through():
    from activities.forge import FindRepositoryInput, ForgeActivities, ScaffoldRequest
    from activities.tasks import ProjectInfo, ProjectStatusInput, TaskActivities
    from core.contracts.workflows import (
        SCAFFOLD_ENDED,
        SCAFFOLD_NOTIFY,
        SCAFFOLD_WORKFLOW,
        ScaffoldEnded,
        ScaffoldInput,
        ScaffoldOutput,
    )
    from core.enums import ProjectStatus


@workflow.defn(name=SCAFFOLD_WORKFLOW)
class ScaffoldWorkflow:
    def __init__(self) -> None:
        self._waiters: list[str] = []
        self._ended: ScaffoldEnded | None = None

    @workflow.run
    async def run(self, request: ScaffoldInput) -> ScaffoldOutput:
        try:
            result = await self._run(request)
        except (asyncio.CancelledError, FailureError) as error:
            reason = "it was cancelled" if is_cancelled_exception(error) else None
            self._ended = ScaffoldEnded(error=reason or describe_failure(error))
            raise
        else:
            self._ended = ScaffoldEnded(result=result)
            return result
        finally:
            await self._tell_waiters()

    @workflow.signal(name=SCAFFOLD_NOTIFY)
    def notify_when_ended(self, workflow_id: str) -> None:
        if workflow_id not in self._waiters:
            self._waiters.append(workflow_id)

    async def _tell_waiters(self) -> None:
        """Signal every waiter the end, also those that ask while it is being told."""
        told: set[str] = set()
        while self._ended is not None and (todo := [w for w in self._waiters if w not in told]):
            told.update(todo)
            await asyncio.gather(
                *(
                    workflow.get_external_workflow_handle(waiter).signal(
                        SCAFFOLD_ENDED, self._ended
                    )
                    for waiter in todo
                ),
                return_exceptions=True,  # a waiter that closed meanwhile needs no answer
            )

    async def _run(self, request: ScaffoldInput) -> ScaffoldOutput:
        project = await self._get_project(request.project_id)
        full_name = request.repo_full_name or project.repo_full_name
        if project.repository:
            return await self._existing(project, full_name)
        await self._set_status(project.id, ProjectStatus.scaffolding)
        try:
            result = await workflow.execute_activity_method(
                ForgeActivities.scaffold_repository,
                ScaffoldRequest(
                    project_id=project.id,
                    project_name=request.project_name or project.name,
                    repo_full_name=full_name,
                    description=project.description,
                    modules=request.modules or project.modules,
                    template=project.template,
                ),
                start_to_close_timeout=SCAFFOLD_TIMEOUT,
                heartbeat_timeout=SCAFFOLD_HEARTBEAT,
                retry_policy=SCAFFOLD_RETRY,
                summary=f"Render the service template into a new repository for {project.name}",
            )
            await workflow.execute_activity_method(
                TaskActivities.record_repository,
                result,
                start_to_close_timeout=QUICK,
                retry_policy=DB_RETRY,
                summary=f"Record {result.repo_full_name} on the project",
            )
        except (asyncio.CancelledError, FailureError) as error:
            cancelled = is_cancelled_exception(error)
            # A cancelled scaffold leaves the project as it was found; a failed one says so.
            await self._set_status(
                project.id, ProjectStatus.new if cancelled else ProjectStatus.failed
            )
            if cancelled:
                raise
            raise ApplicationError(
                f"scaffolding project {project.name} failed: {describe_failure(error)}",
                type="ScaffoldFailed",
                non_retryable=True,
            ) from error
        workflow.logger.info("scaffolded %s at %s", result.repo_full_name, result.commit_sha)
        return result

    async def _get_project(self, project_id: str) -> ProjectInfo:
        try:
            return await workflow.execute_activity_method(
                TaskActivities.get_project,
                project_id,
                start_to_close_timeout=QUICK,
                retry_policy=DB_RETRY,
                summary=f"Load project {project_id}",
            )
        except ActivityError as error:
            raise ApplicationError(
                f"cannot scaffold: {describe_failure(error)}",
                type="ScaffoldFailed",
                non_retryable=True,
            ) from error

    async def _existing(self, project: ProjectInfo, full_name: str | None) -> ScaffoldOutput:
        """Runs once per project: a project with a repository gets that repository back."""
        found = None
        if full_name:
            found = await workflow.execute_activity_method(
                ForgeActivities.find_repository,
                FindRepositoryInput(project_id=project.id, repo_full_name=full_name),
                start_to_close_timeout=QUICK,
                retry_policy=FIND_REPOSITORY_RETRY,
                summary=f"Look up {full_name} on the forge",
            )
        if found is None:
            raise ApplicationError(
                f"project {project.name} records the repository {project.repository}, "
                "but the forge has no such repository",
                type="RepositoryMissing",
                non_retryable=True,
            )
        return found

    async def _set_status(self, project_id: str, status: ProjectStatus) -> None:
        await workflow.execute_activity_method(
            TaskActivities.set_project_status,
            ProjectStatusInput(project_id=project_id, status=status),
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
            summary=f"Project status {status.value}",
        )
