"""Recorded histories replay against the current workflow code (tests/histories/record.py).

A change that would break runs already in flight (a new, removed or reordered activity, child or
timer without ``workflow.patched``) makes these replays fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.workflow import NondeterminismError

from stack.worker import replayer as make_replayer
from tests.workflows.changed_workflows import (
    EngineeringWithAnExtraEvent,
    EngineeringWithAPatchedEvent,
)
from workflows.scaffold import ScaffoldWorkflow

HISTORIES = Path(__file__).resolve().parents[1] / "histories"
RECORDED = [
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


@pytest.mark.parametrize("name", ENGINEERING)
async def test_an_incompatible_change_fails_replay(name: str) -> None:
    replayer = make_replayer([EngineeringWithAnExtraEvent, ScaffoldWorkflow])
    with pytest.raises(NondeterminismError):
        await replayer.replay_workflow(history(name))


@pytest.mark.parametrize("name", ENGINEERING)
async def test_the_same_change_behind_a_patch_replays(name: str) -> None:
    replayer = make_replayer([EngineeringWithAPatchedEvent, ScaffoldWorkflow])
    await replayer.replay_workflow(history(name))
