"""Deploys end to end: POST /tasks (type deploy) -> deploy:queue -> DeployWorkflow -> the DevOps
graph -> ansible:deploy:queue -> AnsibleDeployWorkflow -> ansible-runner over SSH -> the app
answering at its URL."""

from __future__ import annotations

from redis.asyncio import Redis

from core.contracts.deploy import AnsibleDeployResult, deploy_result_key
from testing.deploy import DeployStack, served


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


async def test_the_ansible_result_is_on_its_redis_key(
    deploy_stack: DeployStack, redis: Redis
) -> None:
    project = await deploy_stack.project()
    done = await deploy_stack.finished((await deploy_stack.deploy(project["id"]))["id"])
    assert done["status"] == "COMPLETED", done["error"]
    request_id = f"{done['id']}-{done['result']['release']}"
    raw = await redis.get(deploy_result_key(request_id))
    published = AnsibleDeployResult.model_validate_json(raw)
    assert published.success and published.deployed_url == done["result"]["deployed_url"]
    assert 0 < await redis.ttl(deploy_result_key(request_id)) <= 3600
