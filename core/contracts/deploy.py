"""``deploy:queue`` and ``ansible:deploy:queue``: deploy messages and their results."""

from __future__ import annotations

from enum import StrEnum

from core.contracts.base import Envelope, Strict

DEPLOY_QUEUE = "deploy:queue"
ANSIBLE_DEPLOY_QUEUE = "ansible:deploy:queue"


class DeployAction(StrEnum):
    create = "create"
    redeploy = "redeploy"
    stop = "stop"
    undeploy = "undeploy"


class DeployMessage(Envelope):
    task_id: str
    project_id: str
    user_id: str
    action: DeployAction = DeployAction.create


class DeployResult(Strict):
    deployed_url: str
    server_ip: str
    port: int


class AnsibleDeployMessage(Envelope):
    project_id: str
    project_name: str
    repo_full_name: str
    server_ip: str
    port: int
    modules: list[str] = []
    github_token_ref: str | None = None
    secrets_ref: str | None = None


class AnsibleDeployResult(Strict):
    request_id: str
    success: bool
    deployed_url: str | None = None
    error: str | None = None


def deploy_result_key(request_id: str) -> str:
    return f"deploy:result:{request_id}"
