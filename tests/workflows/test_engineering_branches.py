"""EngineeringWorkflow's branches in seconds: the real workflow, its scaffold child and the
development graph on the time-skipping test server, over stand-in activities and nodes
(tests/workflows/mocks.py). What a task looks like to its user: its row's status and events, the
run's result or failure, the order things ran in, and no Worker container left behind."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError, CancelledError

from activities.engineering import NO_AGENT, TaskPlan
from core.contracts.agents import Budget, TaskUsage
from core.contracts.events import HumanAnswer
from core.enums import EventType, ProjectStatus, TaskStatus
from core.ids import scaffold_workflow_id
from testing.waiting import eventually
from tests.workflows.mocks import PULL_REQUEST_URL, WITHIN_S, Fakes, Turn, failure_of, history
from workflows.engineering import EngineeringWorkflow

QUESTION = "Should /time answer in UTC or in local time?"
FAILING = "The project's tests fail (3 tests, 1 failure: test_time)"
# The scaffold child of a project without a repository.
SCAFFOLD = ["get_project", "set_project_status", "scaffold_repository", "record_repository"]
# Before the Worker: the task's row, its project, the repository stage, the plan, the checkout.
BEFORE_WORKER = ["start_task", "get_project", "record_event", "plan_task", "prepare_workspace"]
# After the graph, on every path that made a Worker.
# After a cancel or an activity's failure: the Worker goes before the task's end is recorded.
CLEAN_UP = ["remove_container", "close_gateway"]
# A run whose graph ended (the pull request, or a limit the graph met): the gateway closes, the
# task's end is recorded, then the Worker goes.
ENDED = ["close_gateway", "finish_task", "remove_container"]


def plan(fakes: Fakes, **changes: object) -> None:
    fakes.engineering.plan = fakes.engineering.plan.model_copy(update=changes)


def after_checkout(fakes: Fakes) -> list[str]:
    """What ran once the task had its checkout (a project with a repository)."""
    names = fakes.log.names()
    assert names[: len(BEFORE_WORKER)] == BEFORE_WORKER
    return names[len(BEFORE_WORKER) :]


async def assert_failed(fakes: Fakes, handle: WorkflowHandle[Any, Any], reason: str) -> None:
    """The run failed with ``reason`` and so did the task, saying so."""
    failure = await failure_of(handle)
    assert isinstance(failure, ApplicationError)
    assert (failure.type, failure.message) == ("EngineeringFailed", reason)
    assert fakes.rows.status is TaskStatus.failed
    assert fakes.rows.finished is not None
    assert fakes.rows.finished.error == reason
    assert fakes.rows.finished.message == f"The task failed: {reason}"
    assert fakes.workers.containers == set()


# --- to the pull request ------------------------------------------------------------------------


async def test_a_new_project_is_scaffolded_and_failing_tests_go_back_to_the_agent(
    fakes: Fakes,
) -> None:
    fakes.new_project()
    fakes.development.tests = [False, True]

    output = await (await fakes.start_engineering()).result()

    result = output.result
    assert output.status is TaskStatus.completed and result is not None
    assert result.pr_url == PULL_REQUEST_URL
    assert result.repository == fakes.engineering.scaffold.repository
    assert result.branch == f"task/{fakes.task_id}"
    assert result.rounds == 2
    assert result.stages == ["scaffold", "developer", "tester", "pull_request"]
    assert (result.tokens_in, result.tokens_out, result.cost_usd) == (1200, 300, 0.042)
    assert fakes.log.names() == [
        "start_task",
        "get_project",
        "record_event",
        *SCAFFOLD,
        "record_event",
        "plan_task",
        "prepare_workspace",
        "create_container",
        *["developer", "tester"] * 2,
        "propose",
        "close_gateway",
        "gateway_usage",
        "finish_task",
        "remove_container",
    ]
    # The second turn was told what failed in the first round.
    assert fakes.development.feedback == [None, FAILING]
    assert fakes.rows.project.repository == fakes.engineering.scaffold.repository
    assert fakes.rows.messages("scaffold")[-1] == (
        f"Created repository local/shop at {fakes.engineering.scaffold.repository}"
    )
    assert fakes.rows.status is TaskStatus.completed
    assert fakes.rows.finished is not None
    assert fakes.rows.finished.message == (
        f"Pull request {PULL_REQUEST_URL} opened after 2 round(s) by the claude agent (ran: "
        "scaffold, developer, tester, pull_request; 1500 model tokens, $0.0420)"
    )
    assert fakes.rows.finished.result == result.model_dump(mode="json")
    assert fakes.workers.containers == set()


async def test_a_project_with_a_repository_skips_the_scaffold(fakes: Fakes) -> None:
    output = await (await fakes.start_engineering()).result()

    assert output.result is not None
    assert output.result.stages == ["developer", "tester", "pull_request"]
    assert output.result.rounds == 1
    assert "scaffold_repository" not in after_checkout(fakes)
    assert fakes.rows.events[0].type is EventType.progress
    assert fakes.rows.messages("scaffold") == [
        "The project already has its repository (file:///forge/local/shop.git); scaffolding skipped"
    ]


async def test_a_scaffold_already_under_way_is_waited_for(fakes: Fakes) -> None:
    fakes.new_project()
    scaffolding = fakes.log.hold("scaffold_repository")
    await fakes.start_scaffold()  # as scaffolder:queue starts it
    await fakes.log.reached("scaffold_repository")

    handle = await fakes.start_engineering()
    await waits_for_the_scaffold(handle)
    scaffolding.set()
    output = await handle.result()

    assert output.result is not None
    assert output.result.repository == fakes.engineering.scaffold.repository
    assert fakes.log.count("scaffold_repository") == 1
    # It waited in workflow code, told by the scaffold run's signal: no activity waited.
    assert fakes.log.count("wait_for_scaffold") == 0
    assert (
        f"Scaffolding is already under way in {scaffold_workflow_id(fakes.project_id)}; "
        "waiting for it"
    ) in fakes.rows.messages("scaffold")


async def test_a_scaffold_under_way_that_fails_fails_the_waiting_task(fakes: Fakes) -> None:
    fakes.new_project()
    scaffolding = fakes.log.hold("scaffold_repository")
    fakes.log.fail(
        "record_repository",
        ApplicationError("the database refused", type="Refused", non_retryable=True),
    )
    await fakes.start_scaffold()
    await fakes.log.reached("scaffold_repository")
    handle = await fakes.start_engineering()
    await waits_for_the_scaffold(handle)

    scaffolding.set()
    failure = await failure_of(handle)

    assert "did not succeed: scaffolding project shop failed: the database refused" in str(failure)
    assert fakes.log.count("wait_for_scaffold") == 0


async def waits_for_the_scaffold(handle: WorkflowHandle[Any, Any]) -> None:
    """Until the task asked the scaffold run to tell it its end and holds no activity."""

    async def waiting() -> bool:
        asked = any(
            e.HasField("external_workflow_execution_signaled_event_attributes")
            for e in await history(handle)
        )
        return asked and not (await handle.describe()).raw_description.pending_activities

    await eventually(waiting, "the task waiting for the scaffold run", within=WITHIN_S)


# --- a person's answer --------------------------------------------------------------------------


async def test_a_blocked_agent_waits_for_a_person_without_its_worker(fakes: Fakes) -> None:
    fakes.development.turns = [Turn(question=QUESTION)]
    handle = await fakes.start_engineering()

    await fakes.waits_for_a_person(handle)
    assert await handle.query(EngineeringWorkflow.question) == QUESTION
    assert fakes.rows.questions == [QUESTION]
    # The Worker is given back while the task waits, however long that takes.
    assert fakes.workers.containers == set()
    assert fakes.log.names()[-4:] == [
        "create_container",
        "developer",
        "remove_container",
        "wait_for_human",
    ]

    asked = await handle.execute_update(
        EngineeringWorkflow.respond, HumanAnswer(answer="UTC", user_id="user-1")
    )
    output = await handle.result()

    assert asked == QUESTION
    assert output.status is TaskStatus.completed
    assert fakes.log.names()[-10:] == [
        "wait_for_human",
        "answered",
        "create_container",
        "developer",
        "tester",
        "propose",
        "close_gateway",
        "gateway_usage",
        "finish_task",
        "remove_container",
    ]
    assert fakes.development.feedback == [None, f"You asked: {QUESTION}\nThe answer: UTC"]
    assert await handle.query(EngineeringWorkflow.question) is None
    assert fakes.workers.containers == set()


async def test_an_answer_is_refused_while_nothing_is_asked(fakes: Fakes) -> None:
    working = fakes.log.hold("developer")
    handle = await fakes.start_engineering()
    await fakes.log.reached("developer")

    assert await handle.query(EngineeringWorkflow.question) is None
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(EngineeringWorkflow.respond, HumanAnswer(answer="UTC"))
    working.set()
    output = await handle.result()

    assert isinstance(refused.value.cause, ApplicationError)
    assert refused.value.cause.message == f"task {fakes.task_id} is not waiting for an answer"
    assert output.status is TaskStatus.completed
    assert fakes.development.feedback == [None]


async def test_waiting_for_a_person_does_not_count_against_the_wall_time(fakes: Fakes) -> None:
    plan(fakes, max_minutes=30)
    fakes.development.turns = [Turn(question=QUESTION)]
    handle = await fakes.start_engineering()
    await fakes.waits_for_a_person(handle)

    await fakes.env.sleep(timedelta(hours=3))  # the person answers the next morning
    await handle.execute_update(EngineeringWorkflow.respond, HumanAnswer(answer="UTC"))
    output = await handle.result()

    assert output.status is TaskStatus.completed
    assert fakes.log.count("developer") == 2


async def test_a_worker_that_cannot_be_removed_after_the_end_leaves_it_to_the_reaper(
    fakes: Fakes,
) -> None:
    """The task's end is recorded before its Worker goes: a removal that fails then fails no
    task (the reaper removes what a closed run leaves)."""
    fakes.log.fail(
        "remove_container", ApplicationError("podman is gone", type="Gone", non_retryable=True)
    )
    output = await (await fakes.start_engineering()).result()
    assert output.status is TaskStatus.completed
    assert fakes.rows.status is TaskStatus.completed
    assert fakes.log.names()[-2:] == ["finish_task", "remove_container"]


# --- the task's limits --------------------------------------------------------------------------


async def test_the_round_limit_fails_the_task_naming_it(fakes: Fakes) -> None:
    plan(fakes, max_rounds=2)
    fakes.development.tests = [False, False]

    await assert_failed(
        fakes,
        await fakes.start_engineering(),
        "the tests still fail after 2 round(s), the task's limit: 3 tests, 1 failure: test_time",
    )
    assert fakes.log.names("developer", "tester", "propose") == ["developer", "tester"] * 2
    assert fakes.log.names()[-3:] == ENDED


async def test_the_wall_time_limit_stops_the_next_turn(fakes: Fakes) -> None:
    plan(fakes, max_minutes=0.01)  # 0.6 s
    fakes.development.tests = [False]
    testing = fakes.log.hold("tester")
    handle = await fakes.start_engineering()
    await fakes.log.reached("tester")

    # The test server skips no time while an activity runs: this second passes for real.
    await fakes.env.sleep(timedelta(seconds=1))
    testing.set()

    await assert_failed(
        fakes, handle, "the task ran past its wall-time limit before the tests passed"
    )
    assert fakes.log.names("developer", "tester") == ["developer", "tester"]


async def test_the_budget_refuses_a_turn_once_the_tokens_are_spent(fakes: Fakes) -> None:
    plan(fakes, budget=Budget(max_tokens=1000))
    fakes.workers.usage = [
        TaskUsage(task_id="", tokens_in=200),
        TaskUsage(task_id="", tokens_in=900, tokens_out=300),
    ]
    fakes.development.tests = [False]

    await assert_failed(
        fakes, await fakes.start_engineering(), "task budget exhausted: 1200 of 1000 tokens used"
    )
    assert after_checkout(fakes) == [
        "create_container",
        "gateway_usage",  # the budget gate before each turn
        "developer",
        "tester",
        "gateway_usage",
        *ENDED,
    ]


async def test_a_failed_agent_turn_fails_the_task(fakes: Fakes) -> None:
    fakes.development.turns = [Turn(failure="claude exited with status 1")]

    await assert_failed(
        fakes,
        await fakes.start_engineering(),
        "the agent failed in round 1: claude exited with status 1",
    )
    assert after_checkout(fakes) == ["create_container", "developer", *ENDED]


# --- failures before the agent ------------------------------------------------------------------


def no_agent(fakes: Fakes) -> None:
    fakes.new_project()
    fakes.engineering.plan = TaskPlan(agent=None, no_agent=NO_AGENT)


def no_repository_name(fakes: Fakes) -> None:
    fakes.rows.project = fakes.rows.project.model_copy(update={"repo_full_name": None})


def checkout_fails(fakes: Fakes) -> None:
    fakes.log.fail(
        "prepare_workspace",
        ApplicationError("git clone failed: repository not found", non_retryable=True),
    )


@pytest.mark.parametrize(
    ("setup", "reason", "last"),
    [
        pytest.param(no_agent, NO_AGENT, "plan_task", id="no-agent-after-the-scaffold"),
        pytest.param(
            no_repository_name,
            "project shop has no repository to work in",
            "plan_task",
            id="no-repository",
        ),
        pytest.param(
            checkout_fails,
            "git clone failed: repository not found",
            "prepare_workspace",
            id="non-retryable-activity-failure",
        ),
    ],
)
async def test_a_task_that_cannot_start_its_agent_fails_without_a_worker(
    fakes: Fakes, setup: Callable[[Fakes], None], reason: str, last: str
) -> None:
    setup(fakes)

    await assert_failed(fakes, await fakes.start_engineering(), reason)
    assert fakes.log.names()[-2:] == [last, "finish_task"]
    assert "create_container" not in fakes.log.names()


async def test_the_no_agent_failure_comes_after_the_scaffold(fakes: Fakes) -> None:
    no_agent(fakes)

    await assert_failed(fakes, await fakes.start_engineering(), NO_AGENT)
    assert fakes.log.count("scaffold_repository") == 1
    assert fakes.rows.project.status is ProjectStatus.ready


async def test_a_worker_that_cannot_be_made_is_removed_all_the_same(fakes: Fakes) -> None:
    # Not retried: the policy names NoGateway among the failures no retry fixes.
    fakes.log.fail(
        "create_container", ApplicationError("the model gateway is not running", type="NoGateway")
    )

    await assert_failed(fakes, await fakes.start_engineering(), "the model gateway is not running")
    assert after_checkout(fakes) == ["create_container", *CLEAN_UP, "finish_task"]


async def test_a_failed_scaffold_fails_the_task_with_its_reason(fakes: Fakes) -> None:
    fakes.new_project()
    fakes.log.fail(
        "scaffold_repository",
        ApplicationError("the template needs copier >= 9", non_retryable=True),
    )

    await assert_failed(
        fakes,
        await fakes.start_engineering(),
        "scaffolding project shop failed: the template needs copier >= 9",
    )
    assert fakes.rows.project.status is ProjectStatus.failed
    assert "plan_task" not in fakes.log.names()


# --- cancels ------------------------------------------------------------------------------------


async def assert_cancelled(fakes: Fakes, handle: WorkflowHandle[Any, Any]) -> None:
    assert isinstance(await failure_of(handle), CancelledError)
    assert fakes.rows.status is TaskStatus.cancelled
    assert fakes.rows.finished is not None
    assert fakes.rows.finished.message == "The task was cancelled"
    assert fakes.log.names()[-3:] == [*CLEAN_UP, "finish_task"]
    assert fakes.workers.containers == set()


async def test_a_cancel_while_waiting_for_a_person_ends_cancelled(fakes: Fakes) -> None:
    fakes.development.turns = [Turn(question=QUESTION)]
    handle = await fakes.start_engineering()
    await fakes.waits_for_a_person(handle)

    await handle.cancel()

    await assert_cancelled(fakes, handle)
    assert "answered" not in fakes.log.names()


async def test_a_cancel_while_the_agent_works_removes_its_worker(fakes: Fakes) -> None:
    fakes.log.hold("developer")
    handle = await fakes.start_engineering()
    await fakes.log.reached("developer")

    await fakes.cancel_while_held(handle, "developer")

    await assert_cancelled(fakes, handle)
    assert "tester" not in fakes.log.names()


async def test_a_task_cancelled_before_it_started_runs_nothing(fakes: Fakes) -> None:
    fakes.rows.status = TaskStatus.cancelled

    output = await (await fakes.start_engineering()).result()

    assert (output.status, output.result) == (TaskStatus.cancelled, None)
    assert fakes.log.names() == ["start_task"]


async def test_each_question_is_asked_with_a_worker_made_again_for_its_answer(
    fakes: Fakes,
) -> None:
    fakes.development.turns = [Turn(question=QUESTION), Turn(question="And the format?")]
    handle = await fakes.start_engineering()

    for asked, answer in enumerate(("UTC", "ISO 8601"), start=1):
        await fakes.log.reached("wait_for_human", asked)
        assert await handle.query(EngineeringWorkflow.question) == fakes.rows.questions[-1]
        await handle.execute_update(EngineeringWorkflow.respond, HumanAnswer(answer=answer))
    output = await handle.result()

    assert output.status is TaskStatus.completed
    assert fakes.rows.questions == [QUESTION, "And the format?"]
    assert fakes.log.count("create_container") == 3
    assert fakes.development.feedback[2] == "You asked: And the format?\nThe answer: ISO 8601"
