"""Recorded histories replay against the current workflow code (tests/histories/record.py).

A change that would break runs already in flight (a new, removed or reordered activity, child or
timer without ``workflow.patched``) makes these replays fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.workflow import NondeterminismError

from core.contracts.deploy import DEPLOY_SECRETS_CHANGED
from stack.worker import replayer as make_replayer
from tests.workflows.changed_workflows import (
    EngineeringWithAnExtraEvent,
    EngineeringWithAPatchedEvent,
)
from workflows.scaffold import ScaffoldWorkflow

HISTORIES = Path(__file__).resolve().parents[1] / "histories"
RECORDED = [
    "ansible_deploy",
    "deploy",
    "deploy_failed",
    "deploy_stopped",
    "deploy_waited_for_secret",
    "engineering",
    "engineering_answered",
    "engineering_answered_frees_worker",
    "engineering_cancelled",
    "engineering_developed",
    "engineering_existing_repository",
    "engineering_failed",
    "po_session",
    "provision",
    "scaffold",
    "scaffold_failed",
]
ENGINEERING = [name for name in RECORDED if name.startswith("engineering")]


def history(name: str) -> WorkflowHistory:
    return WorkflowHistory.from_json(name, (HISTORIES / f"{name}.json").read_text())


def test_every_recording_is_checked() -> None:
    assert sorted(p.stem for p in HISTORIES.glob("*.json")) == RECORDED


@pytest.mark.parametrize("name", RECORDED)
async def test_history_replays(name: str) -> None:
    replayer = make_replayer()
    await replayer.replay_workflow(history(name))


def test_the_secret_wait_is_in_its_recording() -> None:
    """So its replay runs the DevOps graph's interrupt and its resume: the secrets node found one
    missing, the run waited until signalled, and the node, run again, let the deploy go on."""
    steps = []
    for event in history("deploy_waited_for_secret").events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            steps.append(event.activity_task_scheduled_event_attributes.activity_type.name)
        elif event.HasField("workflow_execution_signaled_event_attributes"):
            steps.append(event.workflow_execution_signaled_event_attributes.signal_name)
    waited = steps.index("wait_for_human")
    assert steps[waited - 1 : waited + 5] == [
        "missing_secrets",
        "wait_for_human",
        DEPLOY_SECRETS_CHANGED,
        "answered",
        "missing_secrets",
        "devops.deployer",
    ]


@pytest.mark.parametrize("name", ENGINEERING)
async def test_an_incompatible_change_fails_replay(name: str) -> None:
    replayer = make_replayer([EngineeringWithAnExtraEvent, ScaffoldWorkflow])
    with pytest.raises(NondeterminismError):
        await replayer.replay_workflow(history(name))


@pytest.mark.parametrize("name", ENGINEERING)
async def test_the_same_change_behind_a_patch_replays(name: str) -> None:
    replayer = make_replayer([EngineeringWithAPatchedEvent, ScaffoldWorkflow])
    await replayer.replay_workflow(history(name))
