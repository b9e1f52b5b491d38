"""DeployWorkflow's branches in seconds: the real workflow and DevOps graph on the time-skipping
test server, over stand-in activities and nodes (tests/workflows/mocks.py). What a deploy looks
like to its user: the task's status and events, the result or the failure, the release recorded
FAILED when it failed, and the project's turn to deploy given back once the task is finished."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError, CancelledError

from activities.deploy import AppOnServer, StoppedInput
from activities.releases import StopAppInput
from core.contracts.deploy import DeployResult
from core.contracts.events import HumanAnswer
from core.contracts.workflows import deploy_pool
from core.enums import DeployAction, TaskStatus
from core.ids import ansible_deploy_workflow_id
from testing.waiting import eventually
from tests.workflows.mocks import SERVER_IP, WITHIN_S, Fakes, failure_of, history
from workflows.deploy import DeployWorkflow
from workflows.policies import ANSIBLE_CHECK_INTERVAL, ANSIBLE_START_DEADLINE

URL = f"http://{SERVER_IP}:8001"
WHERE = "web-1, port 8001"
BEFORE_GRAPH = ["start_task", "plan_deploy"]
GRAPH = [
    "analyze",
    "missing_secrets",
    "deployer",
    "ansible",
    "deploy_release",
    "publish_deploy_result",
    "released",
    "health",
    "record",
]
# How every deploy ends: its task's terminal status (then its turn is given back).
FINISH = ["finish_task"]


def plan(fakes: Fakes, **changes: Any) -> None:
    fakes.deploys.plan = fakes.deploys.plan.model_copy(update=changes)


async def assert_turn_given_back(fakes: Fakes) -> None:
    """The project's next deploy may go: nobody holds its turn any more."""
    assert fakes.log.names()[-1:] == FINISH
    await fakes.turn_given_back(deploy_pool(fakes.project_id))


# --- to a live URL ------------------------------------------------------------------------------


async def test_a_deploy_goes_from_its_repository_to_a_live_url(fakes: Fakes) -> None:
    fakes.deploys.secrets = {"DATABASE_URL"}

    output = await (await fakes.start_deploy()).result()

    release = fakes.deploys.plan.release
    assert output.status is TaskStatus.completed
    assert output.result == DeployResult(
        deployed_url=URL,
        project="shop",
        runtime="process",
        server_ip=SERVER_IP,
        port=8001,
        action=DeployAction.create,
        server="web-1",
        release=release,
        previous_release="20251231120000-r1",
        commit_sha="a11ce",
        deployment_id="d1",
        playbook_s=12.5,
    )
    assert fakes.log.names() == [*BEFORE_GRAPH, *GRAPH, *FINISH]
    assert fakes.rows.status is TaskStatus.completed
    assert fakes.rows.finished is not None
    assert fakes.rows.finished.message == f"shop release {release} is live at {URL} ({WHERE})"
    assert fakes.rows.finished.result == output.result.model_dump(mode="json")
    assert fakes.deploys.failures == []
    await assert_turn_given_back(fakes)


async def test_a_port_taken_on_the_server_sends_the_deployer_to_another(fakes: Fakes) -> None:
    fakes.deploys.secrets = {"DATABASE_URL"}
    fakes.deploys.busy_ports = {8001}

    output = await (await fakes.start_deploy()).result()

    assert output.result is not None
    assert (output.result.port, output.result.deployed_url) == (8002, f"http://{SERVER_IP}:8002")
    assert fakes.log.names("deployer", "ansible", "health", "record") == [
        *["deployer", "ansible"] * 2,
        "health",
        "record",
    ]
    assert fakes.log.args("deployer")[1]["avoid_ports"] == [8001]
    taken = "Port 8001 is taken on web-1 by another process; trying another port"
    assert taken in fakes.rows.messages("ansible")
    await assert_turn_given_back(fakes)


async def test_a_rollback_serves_the_earlier_release_again(fakes: Fakes) -> None:
    fakes.deploys.secrets = {"DATABASE_URL"}
    plan(
        fakes,
        action=DeployAction.rollback,
        release="20251231120000-r1",
        commit_sha="01dc0de",
        ref="01dc0de",
        replaces="20260101120000-r2",
    )

    output = await (await fakes.start_deploy()).result()

    assert output.result is not None
    assert (output.result.action, output.result.release) == (
        DeployAction.rollback,
        "20251231120000-r1",
    )
    assert output.result.commit_sha == "01dc0de"
    assert fakes.log.args("analyze")[0]["commit_sha"] == "01dc0de"
    assert fakes.rows.messages()[0] == (
        "Rolling back from release 20260101120000-r2 to release 20251231120000-r1"
    )
    assert fakes.rows.finished is not None
    assert fakes.rows.finished.message == (
        f"Rolled back to release 20251231120000-r1: {URL} ({WHERE})"
    )
    await assert_turn_given_back(fakes)


# --- missing secrets: a person sets them --------------------------------------------------------


async def by_signal(handle: WorkflowHandle[Any, Any]) -> None:
    """What the API does when a secret is set (`orchestrator secret set`)."""
    await handle.signal(DeployWorkflow.secrets_changed)


async def by_answer(handle: WorkflowHandle[Any, Any]) -> None:
    """`orchestrator task respond ID ok`."""
    await handle.execute_update(DeployWorkflow.respond, HumanAnswer(answer="ok"))


def secrets_question(names: str) -> str:
    return (
        f"The app needs secrets shop does not have: {names}. Set each with `orchestrator secret "
        "set --project shop NAME`; the deploy goes on by itself once they are all there."
    )


@pytest.mark.parametrize("wake", [by_signal, by_answer], ids=["secrets-changed", "respond"])
async def test_missing_secrets_wait_for_a_person_and_the_deploy_looks_again(
    fakes: Fakes, wake: Callable[[WorkflowHandle[Any, Any]], Awaitable[None]]
) -> None:
    fakes.devops.required_env = ["DATABASE_URL", "API_KEY"]
    handle = await fakes.start_deploy()

    await fakes.waits_for_a_person(handle)
    assert await handle.query(DeployWorkflow.question) == secrets_question("DATABASE_URL, API_KEY")
    fakes.deploys.secrets.add("DATABASE_URL")
    await wake(handle)

    await fakes.log.reached("wait_for_human", 2)
    fakes.deploys.secrets.add("API_KEY")
    await wake(handle)
    output = await handle.result()

    assert output.status is TaskStatus.completed
    assert fakes.rows.questions == [
        secrets_question("DATABASE_URL, API_KEY"),
        secrets_question("API_KEY"),
    ]
    assert fakes.log.count("answered") == 2
    # Nothing was deployed until a look found every secret there.
    looks = fakes.log.names("missing_secrets", "deployer")
    assert looks[-2:] == ["missing_secrets", "deployer"] and looks.count("deployer") == 1
    await assert_turn_given_back(fakes)


async def test_a_secret_set_while_the_deploy_looks_is_not_missed(fakes: Fakes) -> None:
    fakes.devops.required_env = ["API_KEY"]
    looking = fakes.log.hold("missing_secrets")
    handle = await fakes.start_deploy()
    await fakes.log.reached("missing_secrets")  # it found API_KEY missing...

    fakes.deploys.secrets.add("API_KEY")  # ...and then the person set it
    await by_signal(handle)
    await eventually(lambda: signal_handled(handle), "the signal handled", within=WITHIN_S)
    looking.set()
    output = await handle.result()

    assert output.status is TaskStatus.completed
    assert fakes.log.count("wait_for_human") == 0
    assert fakes.log.count("missing_secrets") == 2  # it looked again at once
    await assert_turn_given_back(fakes)


async def signal_handled(handle: WorkflowHandle[Any, Any]) -> bool:
    """A workflow task has completed since the run's last signal."""
    kinds = [event.WhichOneof("attributes") for event in await history(handle)]
    signals = [at for at, kind in enumerate(kinds) if kind.endswith("_signaled_event_attributes")]
    return bool(signals) and "workflow_task_completed_event_attributes" in kinds[signals[-1] :]


async def test_a_cancel_while_waiting_for_secrets_fails_the_release_and_lets_the_lock_go(
    fakes: Fakes,
) -> None:
    fakes.devops.required_env = ["API_KEY"]
    handle = await fakes.start_deploy()
    await fakes.waits_for_a_person(handle)

    await handle.cancel()

    assert isinstance(await failure_of(handle), CancelledError)
    assert fakes.rows.status is TaskStatus.cancelled
    assert fakes.rows.finished is not None
    assert fakes.rows.finished.message == "The deploy was cancelled"
    assert fakes.deploys.failures == ["the deploy was cancelled"]
    # The release is marked failed, then the task ends, and only then may the next deploy go.
    assert fakes.log.names()[-2:] == ["record_deploy_failure", *FINISH]
    await assert_turn_given_back(fakes)


# --- failures -----------------------------------------------------------------------------------


async def assert_deploy_failed(fakes: Fakes, reason: str) -> None:
    failure = await failure_of(await fakes.start_deploy())
    assert isinstance(failure, ApplicationError)
    assert (failure.type, failure.message) == ("DeployFailed", reason)
    assert fakes.rows.status is TaskStatus.failed
    assert fakes.rows.finished is not None
    assert (fakes.rows.finished.error, fakes.rows.finished.message) == (
        reason,
        f"The deploy failed: {reason}",
    )
    assert fakes.deploys.failures == [reason]
    assert fakes.log.names()[-2:] == ["record_deploy_failure", *FINISH]
    await assert_turn_given_back(fakes)


@pytest.mark.parametrize(
    ("node", "reason"),
    [
        ("analyze", "cannot deploy shop: its Procfile names no command to start it"),
        ("deployer", "no READY server has room for another app"),
        ("ansible", "the playbook failed: the release did not pass its health check"),
        ("health", "release 20260101120000-r2 serves on its server but does not answer"),
    ],
    ids=["analyze", "deployer", "ansible", "health"],
)
async def test_a_failed_step_fails_the_deploy_and_stops_the_graph(
    fakes: Fakes, node: str, reason: str
) -> None:
    fakes.deploys.secrets = {"DATABASE_URL"}
    fakes.devops.failing = {node: reason}

    await assert_deploy_failed(fakes, reason)

    steps = [name for name in GRAPH if name != "missing_secrets"]
    assert fakes.log.names(*steps) == steps[: steps.index(node) + 1]


# --- the Ansible run, waited for in workflow code -----------------------------------------------


def ansible_run(fakes: Fakes) -> WorkflowHandle[Any, Any]:
    request_id = f"{fakes.task_id}-{fakes.deploys.plan.release}"
    return fakes.client.get_workflow_handle(ansible_deploy_workflow_id(request_id))


async def holds_no_activity(handle: WorkflowHandle[Any, Any]) -> bool:
    return not (await handle.describe()).raw_description.pending_activities


async def test_while_the_playbook_runs_the_deploy_holds_no_activity(fakes: Fakes) -> None:
    fakes.deploys.secrets = {"DATABASE_URL"}
    playing = fakes.log.hold("deploy_release")
    handle = await fakes.start_deploy()

    await fakes.log.reached("deploy_release")
    # The Ansible run holds its playbook's activity; the deploy waits for its word in workflow
    # code, holding none (it used to hold one for the whole playbook).
    await eventually(
        lambda: holds_no_activity(handle), "the deploy holding no activity", within=WITHIN_S
    )
    assert not await holds_no_activity(ansible_run(fakes))
    playing.set()

    output = await handle.result()
    assert output.status is TaskStatus.completed
    assert output.result is not None and output.result.playbook_s == 12.5
    assert "ansible_outcome" not in fakes.log.names()  # the run's signal, no question asked


async def test_a_failed_playbook_fails_the_deploy_with_its_reason(fakes: Fakes) -> None:
    fakes.deploys.secrets = {"DATABASE_URL"}
    fakes.deploys.playbook_error = "the release did not pass its health check"

    await assert_deploy_failed(
        fakes, "the playbook failed: the release did not pass its health check"
    )
    assert "health" not in fakes.log.names()


async def test_an_ansible_run_ended_without_a_word_fails_the_deploy(fakes: Fakes) -> None:
    fakes.deploys.secrets = {"DATABASE_URL"}
    # The run fails before it can tell the deploy (as a terminated one would).
    lost = ApplicationError("Redis is gone", type="PublishFailed", non_retryable=True)
    fakes.log.fail("publish_deploy_result", lost)

    await assert_deploy_failed(fakes, "the playbook failed: Redis is gone")

    assert fakes.log.count("ansible_outcome") == 1  # asked once, after ANSIBLE_CHECK_INTERVAL
    assert "health" not in fakes.log.names()


async def test_an_ansible_run_no_bridge_starts_fails_the_deploy_in_time(fakes: Fakes) -> None:
    fakes.deploys.secrets = {"DATABASE_URL"}
    fakes.devops.bridge_down = True

    failure = await failure_of(await fakes.start_deploy())

    assert "no bridge started the Ansible run in 0:30:00: is the ansible bridge up?" in str(failure)
    checks = ANSIBLE_START_DEADLINE // ANSIBLE_CHECK_INTERVAL
    assert fakes.log.count("ansible_outcome") == checks
    assert fakes.deploys.failures  # the release is recorded FAILED


async def test_a_deploy_that_cannot_be_planned_fails_and_lets_the_lock_go(fakes: Fakes) -> None:
    reason = "project shop has no repository yet: an engineering task makes it"
    fakes.log.fail("plan_deploy", ApplicationError(reason, type="DeployFailed", non_retryable=True))

    await assert_deploy_failed(fakes, reason)

    assert "analyze" not in fakes.log.names()


async def test_a_deploy_cancelled_before_it_started_takes_no_lock(fakes: Fakes) -> None:
    fakes.rows.status = TaskStatus.cancelled

    output = await (await fakes.start_deploy()).result()

    assert (output.status, output.result) == (TaskStatus.cancelled, None)
    assert fakes.log.names() == ["start_task"]


# --- stop and undeploy --------------------------------------------------------------------------

UNDEPLOYED = (
    "shop is undeployed from web-1, web-2; its port is free; its data, if it has a database, "
    "stays (`undeploy --drop-data` drops it)"
)
TWO_SERVERS = [
    AppOnServer(server_handle="web-1", app_name="shop"),
    AppOnServer(server_handle="web-2", app_name="shop"),
]


@pytest.mark.parametrize(
    ("action", "apps", "message"),
    [
        (DeployAction.stop, TWO_SERVERS, "shop is stopped on web-1, web-2 (4 release(s))"),
        (DeployAction.undeploy, TWO_SERVERS, UNDEPLOYED),
        (DeployAction.stop, [], "shop is deployed nowhere: nothing to stop"),
    ],
    ids=["stop", "undeploy", "deployed-nowhere"],
)
async def test_stop_and_undeploy_go_to_every_server_of_the_project(
    fakes: Fakes, action: DeployAction, apps: list[AppOnServer], message: str
) -> None:
    plan(fakes, action=action)
    fakes.deploys.apps = apps

    output = await (await fakes.start_deploy()).result()

    undeploy = action is DeployAction.undeploy
    servers = [app.server_handle for app in apps]
    assert output.result == DeployResult(action=action, server=", ".join(servers) or None)
    assert fakes.log.args("stop_app") == [
        StopAppInput(server_handle=server, app_name="shop", remove=undeploy) for server in servers
    ]
    assert fakes.log.args("record_stopped") == [
        StoppedInput(project_id=fakes.project_id, undeploy=undeploy)
    ]
    verb = "Undeploying" if undeploy else "Stopping"
    assert fakes.rows.messages("stop") == [f"{verb} shop on {server}" for server in servers]
    assert fakes.rows.finished is not None
    assert fakes.rows.finished.message == message
    assert "analyze" not in fakes.log.names()
    await assert_turn_given_back(fakes)


# --- one deploy at a time per project -------------------------------------------------------------


async def test_deploys_queued_five_deep_run_one_at_a_time_in_order(fakes: Fakes) -> None:
    fakes.deploys.secrets = {"DATABASE_URL"}
    pool = deploy_pool(fakes.project_id)
    planning = fakes.log.hold("plan_deploy")
    handles = []
    for n in range(5):
        handles.append(await fakes.start_deploy(task_id=f"{fakes.task_id}-{n}"))
        await eventually(lambda: _in_pool(fakes, pool, handles[-1].id), within=WITHIN_S)
    await fakes.log.reached("plan_deploy")

    state = await fakes.turns(pool)
    assert [t.holder for t in state.holding] == [handles[0].id]
    assert [t.holder for t in state.waiting] == [h.id for h in handles[1:]]
    # The four behind wait in workflow code: no activity runs or retries for them.
    for waiting in handles[1:]:
        assert not (await waiting.describe()).raw_description.pending_activities
    assert fakes.log.count("plan_deploy") == 1
    planning.set()
    outputs = [await handle.result() for handle in handles]

    assert [o.status for o in outputs] == [TaskStatus.completed] * 5
    planned = fakes.log.args("plan_deploy")
    assert planned == [f"{fakes.task_id}-{n}" for n in range(5)]
    # Each deploy ended before the next one planned.
    assert fakes.log.names("plan_deploy", "finish_task") == ["plan_deploy", "finish_task"] * 5
    await fakes.turn_given_back(pool)


async def _in_pool(fakes: Fakes, pool: str, holder: str) -> bool:
    state = await fakes.turns(pool)
    return holder in [t.holder for t in [*state.holding, *state.waiting]]
