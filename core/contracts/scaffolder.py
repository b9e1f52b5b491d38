"""``scaffolder:queue``: create a project's repository from a template, once per project."""

from __future__ import annotations

from pydantic import Field

from core.contracts.base import Envelope, Strict

SCAFFOLDER_QUEUE = "scaffolder:queue"


class ScaffolderMessage(Envelope):
    project_id: str
    repo_full_name: str = Field(description="owner/name of the repository to create")
    project_name: str
    modules: list[str] = Field(default_factory=list)


class ScaffoldResult(Strict):
    project_id: str
    repository: str = Field(description="Clone URL of the repository")
    repo_full_name: str
    commit_sha: str
    created: bool = Field(description="False when the repository already existed")
