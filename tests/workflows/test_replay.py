"""Recorded histories replay against the current workflow code
(tests/workflows/histories/record.py).

A change that would break runs already in flight (a new, removed or reordered activity, child or
timer without ``workflow.patched``) makes these replays fail. Some recordings were made by older
code and carry the markers of patches since retired with ``workflow.deprecate_patch``
(``KEPT_MARKERS``): their replays prove that runs from before the retirement still replay.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.workflow import NondeterminismError

from core.contracts.deploy import ANSIBLE_DEPLOY_ENDED, DEPLOY_SECRETS_CHANGED
from core.contracts.workflows import TURNS_GIVE_BACK
from stack.temporal_worker import replayer as make_replayer
from tests.workflows.changed_workflows import (
    EngineeringWithAnExtraEvent,
    EngineeringWithAPatchedEvent,
)
from workflows.scaffold import ScaffoldWorkflow
from workflows.toolkit import TURNS_PATCH

HISTORIES = Path(__file__).resolve().parent / "histories"
RECORDED = [
    "ansible_deploy",
    "deploy",
    "deploy_failed",
    "deploy_stopped",
    "deploy_waited_for_ansible_in_an_activity",
    "deploy_waited_for_secret",
    "engineering",
    "engineering_answered",
    "engineering_answered_frees_worker",
    "engineering_cancelled",
    "engineering_cancelled_creating_worker",
    "engineering_cancelled_waiting_for_a_slot",
    "engineering_developed",
    "engineering_existing_repository",
    "engineering_failed",
    "po_session",
    "provision",
    "scaffold",
    "scaffold_failed",
]
ENGINEERING = [name for name in RECORDED if name.startswith("engineering")]
# Recordings older code made, which took the new side of patches since retired: the patch
# markers they carry (none deprecated). Runs recorded now carry deprecated ones.
KEPT_MARKERS = {
    "engineering_developed": ["engineering-development-graph"],
    "engineering_answered_frees_worker": [
        "engineering-development-graph",
        "engineering-free-worker-while-waiting",
    ],
}


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


def deploy_steps(name: str) -> list[str]:
    """A deploy recording's activities and the signals it received, in order."""
    steps = []
    for event in history(name).events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            steps.append(event.activity_task_scheduled_event_attributes.activity_type.name)
        elif event.HasField("workflow_execution_signaled_event_attributes"):
            steps.append(event.workflow_execution_signaled_event_attributes.signal_name)
    return steps


def test_the_ansible_wait_is_in_the_recordings_old_and_new() -> None:
    """A deploy of today hands the release over and waits for its run's signal in workflow code;
    one recorded by older code waited inside the ansible node's activity, and still replays."""
    steps = deploy_steps("deploy")
    handed = steps.index("devops.ansible")
    assert steps[handed : handed + 4] == [
        "devops.ansible",
        ANSIBLE_DEPLOY_ENDED,
        "devops.released",
        "devops.health",
    ]
    old = deploy_steps("deploy_waited_for_ansible_in_an_activity")
    assert ANSIBLE_DEPLOY_ENDED not in old and "devops.released" not in old
    handed = old.index("devops.ansible")
    assert old[handed : handed + 2] == ["devops.ansible", "devops.health"]


def cancel_steps(name: str) -> list[str]:
    """A recording's activities, signals sent and cancel events, in order."""
    steps = []
    for event in history(name).events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            steps.append(event.activity_task_scheduled_event_attributes.activity_type.name)
        elif event.HasField("signal_external_workflow_execution_initiated_event_attributes"):
            signal = event.signal_external_workflow_execution_initiated_event_attributes
            steps.append(f"signal {signal.signal_name}")
        elif event.HasField("workflow_execution_cancel_requested_event_attributes"):
            steps.append("cancel requested")
        elif event.HasField("activity_task_cancel_requested_event_attributes"):
            steps.append("activity cancel requested")
        elif event.HasField("activity_task_canceled_event_attributes"):
            steps.append("activity canceled")
        elif event.HasField("workflow_execution_canceled_event_attributes"):
            steps.append("canceled")
    return steps


def test_the_cancel_while_waiting_for_a_slot_is_in_its_recording() -> None:
    """So its replay runs a task that asked for a Worker slot, waited for it in workflow code (no
    activity between the ask and the cancel), then left the queue and ended."""
    steps = cancel_steps("engineering_cancelled_waiting_for_a_slot")
    asked = steps.index("ask_for_turn")
    assert steps[asked:] == [
        "ask_for_turn",
        "cancel requested",
        "remove_container",
        f"signal {TURNS_GIVE_BACK}",
        "finish_task",
        "canceled",
    ]
    assert (TURNS_PATCH, False) in patch_markers("engineering_cancelled_waiting_for_a_slot")


def test_the_cancel_while_creating_a_worker_is_in_its_recording() -> None:
    """So its replay runs the path of a cancel that comes while ``create_container`` runs: the
    run waited for that activity's cancellation before it removed the Worker, then ended.
    (Code that did not wait replays this history too: the replay matches commands to events in
    order, not to the workflow task that sent them. It is runs recorded by such code that the
    waiting code cannot replay.)"""
    steps = cancel_steps("engineering_cancelled_creating_worker")
    created = steps.index("create_container")
    assert steps[created:] == [
        "create_container",
        "cancel requested",
        "activity cancel requested",
        "activity canceled",
        "remove_container",
        "finish_task",
        "canceled",
    ]


def patch_markers(name: str) -> list[tuple[str, bool]]:
    """The patch markers of a recording: (patch id, deprecated) in the order they were set."""
    markers = []
    for event in history(name).events:
        if event.HasField("marker_recorded_event_attributes"):
            details = event.marker_recorded_event_attributes.details
            data = json.loads(details["patch-data"].payloads[0].data)
            markers.append((data["id"], data["deprecated"]))
    return markers


@pytest.mark.parametrize("name", sorted(KEPT_MARKERS))
def test_runs_from_before_a_retired_patch_are_kept(name: str) -> None:
    """Recording these again would lose the proof that ``deprecate_patch`` lets old runs
    replay (the recorder writes them only when named)."""
    assert patch_markers(name) == [(patch, False) for patch in KEPT_MARKERS[name]]


@pytest.mark.parametrize("name", ENGINEERING)
async def test_an_incompatible_change_fails_replay(name: str) -> None:
    replayer = make_replayer([EngineeringWithAnExtraEvent, ScaffoldWorkflow])
    # Where the history has the run's first activity after start_task, the changed code asks
    # for the extra event's: nothing else in the history is found different first.
    different = "scheduled event 'get_project' does not match .* command 'record_event'"
    with pytest.raises(NondeterminismError, match=different):
        await replayer.replay_workflow(history(name))


@pytest.mark.parametrize("name", ENGINEERING)
async def test_the_same_change_behind_a_patch_replays(name: str) -> None:
    replayer = make_replayer([EngineeringWithAPatchedEvent, ScaffoldWorkflow])
    await replayer.replay_workflow(history(name))
