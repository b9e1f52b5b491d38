"""Which queue starts which workflow: one declaration each.

Workflows are started by name (workflows/io.py), so the bridges never import workflow code.
"""

from __future__ import annotations

from functools import partial

from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy

from bridges.consumer import Route
from core.contracts.engineering import ENGINEERING_QUEUE, EngineeringMessage
from core.contracts.scaffolder import SCAFFOLDER_QUEUE, ScaffolderMessage
from core.ids import engineering_workflow_id, scaffold_workflow_id
from core.settings import Settings
from core.temporal import search_attributes
from workflows.io import ENGINEERING_WORKFLOW, SCAFFOLD_WORKFLOW, EngineeringInput, ScaffoldInput

# A message delivered again after its run closed must not start a second run (ARCHITECTURE.md,
# "Deduplication"); the consumer treats the resulting WorkflowAlreadyStartedError as success.
REUSE_POLICY = WorkflowIDReusePolicy.REJECT_DUPLICATE


async def start_engineering(
    client: Client, message: EngineeringMessage, *, task_queue: str
) -> None:
    await client.start_workflow(
        ENGINEERING_WORKFLOW,
        EngineeringInput(
            task_id=message.task_id,
            project_id=message.project_id,
            user_id=message.user_id,
            action=message.action,
            skip_deploy=message.skip_deploy,
            correlation_id=message.correlation_id,
            callback_stream=message.callback_stream,
        ),
        id=engineering_workflow_id(message.task_id),
        task_queue=task_queue,
        id_reuse_policy=REUSE_POLICY,
        search_attributes=search_attributes(
            task_id=message.task_id, project_id=message.project_id, task_type="engineering"
        ),
        static_summary=(
            f"Engineering task {message.task_id} ({message.action}) on project {message.project_id}"
        ),
    )


async def start_scaffold(client: Client, message: ScaffolderMessage, *, task_queue: str) -> None:
    await client.start_workflow(
        SCAFFOLD_WORKFLOW,
        ScaffoldInput(
            project_id=message.project_id,
            repo_full_name=message.repo_full_name,
            project_name=message.project_name,
            modules=message.modules,
            correlation_id=message.correlation_id,
        ),
        id=scaffold_workflow_id(message.project_id),
        task_queue=task_queue,
        id_reuse_policy=REUSE_POLICY,
        search_attributes=search_attributes(project_id=message.project_id),
        static_summary=f"Scaffold {message.repo_full_name} for project {message.project_id}",
    )


def routes(settings: Settings) -> list[Route]:
    queue = settings.temporal_task_queue
    return [
        Route(ENGINEERING_QUEUE, EngineeringMessage, partial(start_engineering, task_queue=queue)),
        Route(SCAFFOLDER_QUEUE, ScaffolderMessage, partial(start_scaffold, task_queue=queue)),
    ]
