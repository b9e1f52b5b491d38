"""A deploy that lacks a secret waits for it, by name, and goes on once it is set; the value
reaches the app's environment on the server and nothing else."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

from testing.apps import child_of
from testing.deploy import DeployStack, kept_by_orchestrator, served
from testing.logs import logs_to
from testing.waiting import eventually

SECRET_VALUE = "s3cr3t-Value-that-must-not-leak-7f1c"


def manifest(name: str, required: list[str]) -> str:
    """The template's manifest, asking for ``required`` secrets."""
    return f"""version: 1
name: {name}
runtime: python3
test: make test
services:
  - name: backend
    command: python3 -m app
    port_env: PORT
    default_port: 8000
    health_path: /health
    env:
      required: [{", ".join(required)}]
      optional: [HOST, LOG_LEVEL]
"""


def app_environment(apps_root: Path, project: str, release: str) -> dict[str, str]:
    """The environment of the release's running app process (not its supervisor's, which
    holds none of its variables), read from /proc."""
    pid = child_of(apps_root / project, release)
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


async def test_a_missing_secret_waits_then_the_deploy_finishes_without_leaking_it(
    deploy_stack: DeployStack, redis: Redis, tmp_path: Path
) -> None:
    stack = deploy_stack
    name = "secretive"
    project = await stack.project(name, **{".orchestrator.yml": manifest(name, ["API_TOKEN"])})
    with logs_to(tmp_path / "logs") as log_file:
        task = await stack.deploy(project["id"])

        waiting = await eventually(
            lambda: _waiting(stack, task["id"]), "the deploy waiting for its secret", within=60
        )
        question = waiting["events"][-1]["data"]["question"]
        assert "API_TOKEN" in question and f"secret set --project {name}" in question
        assert (await stack.api.get("/deployments", params={"project": name})).json() == []

        put = await stack.api.put(
            f"/projects/{name}/secrets/API_TOKEN", json={"value": SECRET_VALUE}
        )
        assert put.status_code == 201, put.text
        done = await stack.finished(task["id"])

    assert done["status"] == "COMPLETED", done["error"]
    url = done["result"]["deployed_url"]
    assert await served(url + "health") == {"status": "ok"}
    env = app_environment(stack.apps_root, name, done["result"]["release"])
    assert env["API_TOKEN"] == SECRET_VALUE
    # The app listens on a port of its own behind the edge, which serves the project's port.
    assert env["PORT"] != str(done["result"]["port"])
    assert await served(f"http://127.0.0.1:{env['PORT']}/health") == {"status": "ok"}

    # Nowhere else: the runs' histories, the database, Redis, the worker's log, the home.
    ansible_run = f"ansible-deploy-{task['id']}-{done['result']['release']}"
    places = await kept_by_orchestrator(stack, redis, [task["workflow_id"], ansible_run])
    assert all("ACTIVITY_TASK_COMPLETED" in text for p, text in places.items() if "history" in p)
    assert "API_TOKEN" in places["database"]  # the name is there, the value is not
    places["worker log"] = log_file.read_text()
    assert "playbook finished" in places["worker log"]
    # On the server, beside the release's own .env (0600): not in the app's state, its
    # supervisor's files, nor the edge's configuration, log and storage.
    edge = stack.apps_root / ".edge"
    app_dir = stack.apps_root / name
    on_server = [p for p in edge.rglob("*") if p.is_file()]
    on_server += [p for p in app_dir.glob("*") if p.is_file()]
    on_server += [p for p in app_dir.glob("edge/*") if p.is_file()]
    on_server += [p for p in app_dir.glob("run/*") if p.is_file()]
    assert any(p.name == "caddy.log" for p in on_server) and any(
        p.name == "current.json" for p in on_server
    )
    for path in on_server:
        places[f"server file {path}"] = path.read_bytes().decode(errors="replace")
    leaks = [place for place, text in places.items() if SECRET_VALUE in text]
    assert leaks == []


async def _waiting(stack: DeployStack, task_id: str) -> dict[str, object] | None:
    task = await stack.task(task_id)
    if task["status"] != "WAITING_HUMAN":
        return None
    return {**task, "events": await stack.events(task_id)}
