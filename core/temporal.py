"""One way to reach Temporal: the client, the data converter and our search attributes."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from temporalio import activity
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError, FailureError
from temporalio.service import RPCError, RPCStatusCode, TLSConfig
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from core.settings import Settings

_log = structlog.stdlib.get_logger("orchestrator.activity")

TASK_ID = SearchAttributeKey.for_keyword("TaskId")
PROJECT_ID = SearchAttributeKey.for_keyword("ProjectId")
TASK_TYPE = SearchAttributeKey.for_keyword("TaskType")
SEARCH_ATTRIBUTES = (TASK_ID, PROJECT_ID, TASK_TYPE)


def search_attributes(
    *, task_id: str | None = None, project_id: str | None = None, task_type: str | None = None
) -> TypedSearchAttributes:
    pairs = [
        SearchAttributePair(key, value)
        for key, value in ((TASK_ID, task_id), (PROJECT_ID, project_id), (TASK_TYPE, task_type))
        if value is not None
    ]
    return TypedSearchAttributes(pairs)


def _tls(settings: Settings) -> TLSConfig | bool:
    files = (
        settings.temporal_tls_ca_cert,
        settings.temporal_tls_client_cert,
        settings.temporal_tls_client_key,
    )
    if not settings.temporal_tls and not any(files):
        # Temporal Cloud's API keys always travel over TLS.
        return settings.temporal_api_key is not None
    ca, cert, key = (path.read_bytes() if path else None for path in files)
    return TLSConfig(
        server_root_ca_cert=ca,
        client_cert=cert,
        client_private_key=key,
        domain=settings.temporal_tls_server_name,
    )


async def connect(settings: Settings) -> Client:
    """A client for the configured server: the embedded dev server, a cluster or Temporal Cloud."""
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    return await Client.connect(
        settings.effective_temporal_address,
        namespace=settings.temporal_namespace,
        api_key=api_key,
        tls=_tls(settings),
        data_converter=pydantic_data_converter,
    )


async def ensure_search_attributes(client: Client, namespace: str) -> None:
    """Register TaskId, ProjectId and TaskType so runs can be found in the Web UI."""
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    missing = {
        key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
        for key in SEARCH_ATTRIBUTES
        if key.name not in existing.custom_attributes
    }
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )


def task_id_of(workflow_id: str) -> str | None:
    """The task a workflow serves, from its deterministic ID (``engineering-{task_id}`` ...)."""
    kind, _, rest = workflow_id.partition("-")
    return rest if kind in ("engineering", "deploy") and rest else None


class _ActivityLogContext(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        context = {
            "workflow_id": info.workflow_id,
            "run_id": info.workflow_run_id,
            "activity": info.activity_type,
            "attempt": info.attempt,
            "task_id": task_id_of(info.workflow_id or ""),
        }
        with structlog.contextvars.bound_contextvars(**context):
            try:
                return await self.next.execute_activity(input)
            except Exception as exc:
                if not isinstance(exc, asyncio.CancelledError):
                    _log.warning("activity failed", error=str(exc), error_type=type(exc).__name__)
                raise


class LogContextInterceptor(Interceptor):
    """Every log line an activity writes names its workflow and task."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityLogContext(next)


async def connect_when_up(
    settings: Settings, stop: asyncio.Event, max_delay: float = 5.0
) -> Client | None:
    """Connect, retrying while the server is still starting; None if asked to stop first."""
    delay = 0.2
    while not stop.is_set():
        try:
            return await connect(settings)
        except Exception as exc:  # the SDK raises RuntimeError for an unreachable server
            _log.warning("temporal unreachable; retrying", error=str(exc), retry_in_s=delay)
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            delay = min(delay * 2, max_delay)
    return None


async def workflow_status(client: Client, workflow_id: str) -> WorkflowExecutionStatus | None:
    """The status of the workflow's latest run; None when there is no such workflow."""
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return description.status


async def is_running(client: Client, workflow_id: str) -> bool:
    return await workflow_status(client, workflow_id) == WorkflowExecutionStatus.RUNNING


def failure_reason(error: WorkflowFailureError) -> str:
    """Why a run failed, in its own words: the first application error's message down its
    causes (an activity's, under "Activity task failed"), else the innermost cause's."""
    current: BaseException | None = error.cause
    innermost: BaseException = error
    while current is not None:
        if isinstance(current, ApplicationError):
            return current.message
        innermost = current
        current = current.cause if isinstance(current, FailureError) else None
    return getattr(innermost, "message", None) or str(innermost)
