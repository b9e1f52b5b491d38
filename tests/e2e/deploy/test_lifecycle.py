"""A project's releases over time: a broken one leaves the serving one serving, rollback brings
the one before back, stop and undeploy end it; deploys of one project take turns, deploys of
two projects to one server get ports of their own."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from db import deployments
from testing.deploy import DeployStack, commit_files, served

BROKEN_MAIN = """import sys
print("boom: this release cannot start", file=sys.stderr, flush=True)
sys.exit(3)
"""


def bare_repository(project: dict[str, Any], stack: DeployStack) -> Path:
    return stack.settings.forge_dir / "local" / f"{project['name']}.git"


async def open_incidents(stack: DeployStack) -> list[dict[str, Any]]:
    listed = await stack.api.get("/incidents", params={"open": "true"})
    assert listed.status_code == 200, listed.text
    return list(listed.json())


async def releases(stack: DeployStack, project: str) -> list[tuple[str, str]]:
    listed = (await stack.api.get("/deployments", params={"project": project})).json()
    return [(row["release"], row["status"]) for row in reversed(listed)]


async def test_a_broken_release_leaves_the_previous_serving_and_rollback_returns(
    deploy_stack: DeployStack,
) -> None:
    stack = deploy_stack
    project = await stack.project()
    name, repo = project["name"], bare_repository(project, stack)
    first = await stack.finished((await stack.deploy(project["id"]))["id"])
    assert first["status"] == "COMPLETED", first["error"]
    url = first["result"]["deployed_url"]
    assert await served(url) == {"service": name, "message": "hello"}

    commit_files(repo, {"app/__main__.py": BROKEN_MAIN}, "Break the start")
    broken = await stack.finished((await stack.deploy(project["id"]))["id"])
    assert broken["status"] == "FAILED"
    assert "boom: this release cannot start" in broken["error"]  # the app's own log lines
    # Said as soon as its process died, not after the whole health timeout.
    assert "its process exited before it answered" in broken["error"]
    assert await served(url) == {"service": name, "message": "hello"}  # the first one serves on
    # The failure opened the project's deploy_failed incident, saying why.
    [incident] = await open_incidents(stack)
    assert (incident["kind"], incident["subject"]) == ("deploy_failed", f"app:{name}")
    assert "boom: this release cannot start" in incident["evidence"]["error"]

    server = (await stack.api.get("/servers/local")).json()
    assert server["status"] == "READY"
    commit_files(
        repo,
        {"app/__main__.py": "from app.server import main\n\nmain()\n"},
        "Mend the start",
    )
    server_py = (stack.apps_root / name / "current" / "app" / "server.py").read_text()
    commit_files(
        repo, {"app/server.py": server_py.replace('"message": "hello"', '"message": "v3"')}, "v3"
    )
    third = await stack.finished((await stack.deploy(project["id"], "redeploy"))["id"])
    assert third["status"] == "COMPLETED", third["error"]
    assert third["result"]["deployed_url"] == url  # the same port: the same URL
    assert third["result"]["previous_release"] == first["result"]["release"]
    assert await served(url) == {"service": name, "message": "v3"}
    assert await open_incidents(stack) == []  # live again: resolved
    history = await releases(stack, name)
    assert [status for _, status in history] == ["SUPERSEDED", "FAILED", "RUNNING"]
    assert (history[0][0], history[2][0]) == (
        first["result"]["release"],
        third["result"]["release"],
    )

    back = await stack.finished((await stack.deploy(project["id"], "rollback"))["id"])
    assert back["status"] == "COMPLETED", back["error"]
    assert back["result"]["release"] == first["result"]["release"]
    assert back["result"]["deployed_url"] == url
    assert await served(url) == {"service": name, "message": "hello"}
    statuses = await releases(stack, name)
    assert statuses[-1] == (first["result"]["release"], "RUNNING")
    assert (third["result"]["release"], "SUPERSEDED") in statuses


async def test_stop_then_undeploy(deploy_stack: DeployStack) -> None:
    stack = deploy_stack
    project = await stack.project()
    name = project["name"]
    done = await stack.finished((await stack.deploy(project["id"]))["id"])
    url = done["result"]["deployed_url"]
    assert await served(url) is not None

    stopped = await stack.finished((await stack.deploy(project["id"], "stop"))["id"])
    assert stopped["status"] == "COMPLETED", stopped["error"]
    assert await served(url) is None
    assert (stack.apps_root / name / "releases").is_dir()  # releases stay for a restart
    assert await releases(stack, name) == [(done["result"]["release"], "STOPPED")]

    again = await stack.finished((await stack.deploy(project["id"]))["id"])
    assert again["result"]["deployed_url"] == url  # its port was kept
    assert await served(url) is not None

    gone = await stack.finished((await stack.deploy(project["id"], "undeploy"))["id"])
    assert gone["status"] == "COMPLETED", gone["error"]
    assert await served(url) is None
    assert not (stack.apps_root / name).exists()
    assert {status for _, status in await releases(stack, name)} == {"STOPPED"}
    nothing = await stack.finished((await stack.deploy(project["id"], "undeploy"))["id"])
    assert nothing["status"] == "COMPLETED"
    assert "deployed nowhere" in (await stack.events(nothing["id"]))[-1]["message"]


async def test_rollback_without_an_earlier_release_fails_saying_so(
    deploy_stack: DeployStack,
) -> None:
    stack = deploy_stack
    project = await stack.project()
    none = await stack.finished((await stack.deploy(project["id"], "rollback"))["id"])
    assert none["status"] == "FAILED"
    assert "no serving release to roll back from" in none["error"]
    await stack.finished((await stack.deploy(project["id"]))["id"])
    first = await stack.finished((await stack.deploy(project["id"], "rollback"))["id"])
    assert first["status"] == "FAILED"
    assert "no earlier release to roll back to" in first["error"]


async def test_two_projects_deployed_at_once_get_ports_of_their_own(
    deploy_stack: DeployStack,
) -> None:
    stack = deploy_stack
    one, two = await asyncio.gather(stack.project(), stack.project())
    tasks = await asyncio.gather(stack.deploy(one["id"]), stack.deploy(two["id"]))
    done = await asyncio.gather(*(stack.finished(task["id"]) for task in tasks))
    assert [task["status"] for task in done] == ["COMPLETED", "COMPLETED"]
    ports = {task["result"]["port"] for task in done}
    assert len(ports) == 2
    for task, project in zip(done, (one, two), strict=True):
        assert (await served(task["result"]["deployed_url"]))["service"] == project["name"]


async def test_deploys_of_one_project_take_turns(deploy_stack: DeployStack) -> None:
    stack = deploy_stack
    project = await stack.project()
    first, second = await asyncio.gather(
        stack.deploy(project["id"]), stack.deploy(project["id"], "redeploy")
    )
    done = [await stack.finished(first["id"]), await stack.finished(second["id"])]
    assert [task["status"] for task in done] == ["COMPLETED", "COMPLETED"]
    waited = [
        task
        for task in done
        if any("one deploy at a time" in e["message"] for e in await stack.events(task["id"]))
    ]
    assert len(waited) == 1  # one ran, the other waited for it
    # Never both at once: the one that waited started its Ansible run after the other finished.
    other = done[0] if waited[0] is done[1] else done[1]
    started = next(e for e in await stack.events(waited[0]["id"]) if e["stage"] == "ansible")
    assert started["created_at"] > other["completed_at"]
    statuses = sorted(status for _, status in await releases(stack, project["name"]))
    assert statuses == ["RUNNING", "SUPERSEDED"]


async def test_a_port_another_process_holds_is_skipped(deploy_stack: DeployStack) -> None:
    stack = deploy_stack
    first_port = stack.settings.deploy_port_range.start
    with socket.socket() as squatter:
        # As servers bind: an earlier test's app on this port may have left connections in
        # TIME_WAIT, which only a listener's bind may pass.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", first_port))
        squatter.listen()
        project = await stack.project()
        done = await stack.finished((await stack.deploy(project["id"]))["id"])
        assert done["status"] == "COMPLETED", done["error"]
        assert done["result"]["port"] != first_port
        assert (await served(done["result"]["deployed_url"]))["service"] == project["name"]
    messages = [e["message"] for e in await stack.events(done["id"])]
    assert any(f"Port {first_port} is taken" in m for m in messages), messages
    # The port it left is free again for others; the one it serves on is its own.
    async with stack.db.session() as session:
        held = await deployments.project_allocations(session, project["id"])
    assert [a.port for a in held] == [done["result"]["port"]]


DATABASE_MANIFEST = """version: 2
services:
  - name: backend
    command: python3 -m app
    port_env: PORT
    health_path: /health
env:
  DATABASE_URL: {kind: allocation, resource: postgresql}
"""
NO_PORT_COMPOSE = "services:\n  db:\n    image: postgres:16\n"


async def test_bad_input_fails_the_task_saying_why_and_what_serves_serves_on(
    deploy_stack: DeployStack,
) -> None:
    """A database the server cannot create (its PostgreSQL's port is another process's), then a
    compose file in which no service publishes a port: each deploy task FAILS with the reason,
    and the release that served before answers throughout."""
    stack = deploy_stack
    project = await stack.project()
    name, repo = project["name"], bare_repository(project, stack)
    first = await stack.run_deploy(project["id"])
    assert first["status"] == "COMPLETED", first["error"]
    url = first["result"]["deployed_url"]

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        moved = await stack.api.patch("/servers/local", json={"database": {"port": taken}})
        assert moved.status_code == 200, moved.text
        commit_files(repo, {".orchestrator.yml": DATABASE_MANIFEST}, "Ask for a database")
        no_database = await stack.run_deploy(project["id"])
    assert no_database["status"] == "FAILED"
    assert f"port {taken} is in use on the server by another process" in no_database["error"]
    assert await served(url) == {"service": name, "message": "hello"}

    commit_files(
        repo, {"compose.yaml": NO_PORT_COMPOSE}, "Compose only", remove=(".orchestrator.yml",)
    )
    no_port = await stack.run_deploy(project["id"])
    assert no_port["status"] == "FAILED"
    assert "compose.yaml: no service publishes a port" in no_port["error"]
    assert await served(url) == {"service": name, "message": "hello"}
    assert (first["result"]["release"], "RUNNING") in await releases(stack, name)
