"""One way to reach Temporal: the client, the data converter and our search attributes."""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import TLSConfig

from core.settings import Settings

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
