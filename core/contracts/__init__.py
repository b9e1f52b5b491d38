"""The public Redis contract: one model per queue, and the results the work produces.

A message is a stream entry with one field, ``data``, holding the model's JSON.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter

from core.contracts.base import CONTRACT_VERSION, DATA_FIELD, ContractError, Envelope
from core.contracts.deploy import (
    ANSIBLE_DEPLOY_QUEUE,
    DEPLOY_QUEUE,
    AnsibleDeployMessage,
    AnsibleDeployResult,
    DeployMessage,
    DeployResult,
)
from core.contracts.engineering import ENGINEERING_QUEUE, EngineeringMessage, EngineeringResult
from core.contracts.events import TaskEvent
from core.contracts.provisioner import PROVISIONER_QUEUE, ProvisionerMessage, ProvisionerResult
from core.contracts.scaffolder import SCAFFOLDER_QUEUE, ScaffolderMessage, ScaffoldResult
from core.contracts.worker import (
    WORKER_COMMANDS_QUEUE,
    WORKER_RESPONSES_QUEUE,
    WorkerCommand,
    WorkerResponse,
)

# Each queue and the model of its messages.
QUEUE_MODELS: dict[str, Any] = {
    ENGINEERING_QUEUE: EngineeringMessage,
    DEPLOY_QUEUE: DeployMessage,
    SCAFFOLDER_QUEUE: ScaffolderMessage,
    PROVISIONER_QUEUE: ProvisionerMessage,
    ANSIBLE_DEPLOY_QUEUE: AnsibleDeployMessage,
    WORKER_COMMANDS_QUEUE: WorkerCommand,
    WORKER_RESPONSES_QUEUE: WorkerResponse,
}

RESULT_MODELS: dict[str, type[BaseModel]] = {
    "engineering": EngineeringResult,
    "deploy": DeployResult,
    "scaffold": ScaffoldResult,
    "provisioner": ProvisionerResult,
    "ansible_deploy": AnsibleDeployResult,
    "task_progress": TaskEvent,
}


def json_schemas() -> dict[str, Any]:
    """JSON Schema of every queue's message and of every result."""
    return {
        "version": CONTRACT_VERSION,
        "wire_format": f"a Redis stream entry with one field '{DATA_FIELD}' holding the JSON",
        "queues": {q: TypeAdapter(m).json_schema() for q, m in QUEUE_MODELS.items()},
        "results": {n: m.model_json_schema() for n, m in RESULT_MODELS.items()},
    }


__all__ = [
    "CONTRACT_VERSION",
    "DATA_FIELD",
    "QUEUE_MODELS",
    "RESULT_MODELS",
    "ContractError",
    "Envelope",
    "json_schemas",
]
