"""Deploys end to end: POST /tasks (type deploy) -> deploy:queue -> DeployWorkflow -> the DevOps
graph -> ansible:deploy:queue -> AnsibleDeployWorkflow -> ansible-runner over SSH -> the app
answering at its URL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from redis.asyncio import Redis
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

from core.contracts.deploy import ANSIBLE_DEPLOY_ENDED, AnsibleDeployResult, deploy_result_key
from core.ids import ansible_deploy_workflow_id
from testing.deploy import DeployStack, served

ACTIVITY_CLOSED = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity_task_completed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity_task_timed_out_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "activity_task_canceled_event_attributes",
}


def activity_spans(events: Sequence[HistoryEvent]) -> dict[str, list[tuple[datetime, datetime]]]:
    """Each activity's times from scheduled to closed, by activity type."""
    scheduled: dict[int, tuple[str, datetime]] = {}
    spans: dict[str, list[tuple[datetime, datetime]]] = {}
    for event in events:
        when = event.event_time.ToDatetime()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            scheduled[event.event_id] = (name, when)
        elif event.event_type in ACTIVITY_CLOSED:
            attributes = getattr(event, ACTIVITY_CLOSED[event.event_type])
            name, began = scheduled.pop(attributes.scheduled_event_id)
            spans.setdefault(name, []).append((began, when))
    assert not scheduled, f"activities never closed: {scheduled}"
    return spans


async def test_a_scaffolded_project_answers_at_its_url(deploy_stack: DeployStack) -> None:
    project = await deploy_stack.project()
    task = await deploy_stack.deploy(project["id"])
    assert task["workflow_id"] == f"deploy-{task['id']}"

    done = await deploy_stack.finished(task["id"])

    assert done["status"] == "COMPLETED", done["error"]
    result = done["result"]
    url = result["deployed_url"]
    assert url == f"http://127.0.0.1:{result['port']}/"
    assert await served(url + "health") == {"status": "ok"}
    assert (await served(url))["service"] == project["name"]
    assert result["server"] == "local" and result["server_ip"] == "127.0.0.1"
    ports = deploy_stack.settings.deploy_port_range
    assert result["port"] in ports
    # The deployment record says the same, and the Ansible run's result is on its key.
    listed = (
        await deploy_stack.api.get("/deployments", params={"project": project["name"]})
    ).json()
    assert [(d["status"], d["url"], d["release"]) for d in listed] == [
        ("RUNNING", url, result["release"])
    ]
    stages = [e["stage"] for e in await deploy_stack.events(task["id"]) if e["stage"]]
    for stage in ("analyze", "deployer", "ansible", "health", "record"):
        assert stage in stages


async def test_the_ansible_run_signals_the_deploy_which_waits_holding_no_activity(
    deploy_stack: DeployStack, redis: Redis
) -> None:
    project = await deploy_stack.project()
    done = await deploy_stack.finished((await deploy_stack.deploy(project["id"]))["id"])
    assert done["status"] == "COMPLETED", done["error"]
    request_id = f"{done['id']}-{done['result']['release']}"
    raw = await redis.get(deploy_result_key(request_id))
    assert raw is not None
    published = AnsibleDeployResult.model_validate_json(raw)
    assert published.success and published.deployed_url == done["result"]["deployed_url"]
    assert 0 < await redis.ttl(deploy_result_key(request_id)) <= 3600

    client = deploy_stack.client
    # The task's row says COMPLETED a moment before the run records its last activity's end.
    await client.get_workflow_handle(done["workflow_id"]).result()
    deploy = (await client.get_workflow_handle(done["workflow_id"]).fetch_history()).events
    ansible_id = ansible_deploy_workflow_id(request_id)
    ansible = (await client.get_workflow_handle(ansible_id).fetch_history()).events
    # The run told the deploy once; while its playbook ran, the deploy had no activity open.
    told = [
        event.workflow_execution_signaled_event_attributes.signal_name
        for event in deploy
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    ]
    assert told.count(ANSIBLE_DEPLOY_ENDED) == 1
    [(playbook_began, playbook_ended)] = activity_spans(ansible)["deploy_release"]
    assert playbook_ended > playbook_began
    overlapping = {
        name
        for name, spans in activity_spans(deploy).items()
        for began, ended in spans
        if began < playbook_ended and ended > playbook_began
    }
    assert overlapping == set()
