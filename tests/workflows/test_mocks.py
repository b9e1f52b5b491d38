"""The stand-ins of tests/workflows/mocks.py stand for real activities: every activity the three
workflows call has one, under the real name and with the real argument and result types. (An
activity a worker lacks is retried, not refused: a fast test would hang instead of failing.)"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from typing import Any

import pytest
from temporalio import activity

from activities.deploy import DeployActivities
from activities.engineering import EngineeringActivities
from activities.forge import ForgeActivities
from activities.gateway import GatewayActivities
from activities.po import POActivities
from activities.releases import ReleaseActivities
from activities.tasks import TaskActivities
from activities.temporal import TemporalActivities
from activities.turns import TurnActivities
from activities.workers import WorkerActivities
from tests.workflows.mocks import Chats, Deploys, Engineering, TaskRows, Workers, activities_of
from workflows import deploy, development, devops, engineering, po_session, scaffold, toolkit

REAL = [
    TaskActivities,
    WorkerActivities,
    GatewayActivities,
    EngineeringActivities,
    ForgeActivities,
    TemporalActivities,
    DeployActivities,
    ReleaseActivities,
    POActivities,
    TurnActivities,
]
# The pools' activities are the real ones in the fast tests too (they only talk to Temporal).
STAND_INS = [TaskRows, Workers, Engineering, Deploys, Chats, TurnActivities]
# ``TaskActivities.start_task`` in a workflow's source: an activity it calls.
CALLED = re.compile(r"\b\w+Activities\.(\w+)\b")


def by_name(classes: list[type]) -> dict[str, Callable[..., Any]]:
    return {
        activity._Definition.must_from_callable(method).name: method
        for cls in classes
        for method in activities_of(cls)
    }


def called_by_the_workflows() -> set[str]:
    modules = (engineering, scaffold, deploy, po_session, toolkit, development, devops)
    return {name for module in modules for name in CALLED.findall(inspect.getsource(module))}


def test_every_activity_the_workflows_call_has_a_stand_in() -> None:
    assert called_by_the_workflows() - set(by_name(STAND_INS)) == set()


@pytest.mark.parametrize("name", sorted(by_name(STAND_INS)))
def test_a_stand_in_takes_and_gives_what_its_activity_does(name: str) -> None:
    real = by_name(REAL)
    assert name in real, f"no real activity is called {name}"
    wanted = typing.get_type_hints(real[name])
    got = typing.get_type_hints(by_name(STAND_INS)[name])
    assert list(got.items()) == list(wanted.items())
