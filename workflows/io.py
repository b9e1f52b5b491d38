"""Inputs and outputs of the workflows: one pydantic model each, shared with their starters."""

from __future__ import annotations

from pydantic import BaseModel, Field

from core.contracts.engineering import EngineeringAction, EngineeringResult
from core.contracts.events import TaskStatus
from core.contracts.scaffolder import ScaffoldResult

ENGINEERING_WORKFLOW = "EngineeringWorkflow"
SCAFFOLD_WORKFLOW = "ScaffoldWorkflow"


class EngineeringInput(BaseModel):
    task_id: str
    project_id: str
    user_id: str
    action: EngineeringAction = EngineeringAction.feature
    skip_deploy: bool = True
    correlation_id: str | None = None
    callback_stream: str | None = None


class EngineeringOutput(BaseModel):
    task_id: str
    status: TaskStatus
    result: EngineeringResult | None = None
    error: str | None = None


class ScaffoldInput(BaseModel):
    project_id: str
    repo_full_name: str | None = Field(
        default=None, description="owner/name; derived from the project when absent"
    )
    project_name: str | None = None
    modules: list[str] = Field(default_factory=list)
    correlation_id: str | None = None


ScaffoldOutput = ScaffoldResult
