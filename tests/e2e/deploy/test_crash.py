"""Kill -9 of the Temporal worker while the playbook runs: a new worker plays the release again
(ending what the dead one left running) and the deploy ends with one release serving."""

from __future__ import annotations

from pathlib import Path

from testing.apps import child_of, processes_in
from testing.deploy import DeployStack, served
from testing.waiting import eventually
from tests.e2e.deploy.conftest import KillableStack

# Serves only once the test opens its gate: the playbook waits in its health check until then,
# long enough for the test to kill the worker there.
GATED_MAIN = """import os, time
while not os.path.exists({gate!r}):
    time.sleep(0.05)
from app.server import main
main()
"""


def app_processes(stack: DeployStack, project: str) -> set[int]:
    """The app's processes on the server: those working in one of the project's releases."""
    return processes_in(stack.apps_root / project / "releases")


async def test_kill_9_of_the_worker_during_the_playbook(
    killable_stack: KillableStack, tmp_path: Path
) -> None:
    stack = killable_stack.stack
    doomed = await killable_stack.worker()
    gate = tmp_path / "gate"
    project = await stack.project(**{"app/__main__.py": GATED_MAIN.format(gate=str(gate))})
    name = project["name"]
    task = await stack.deploy(project["id"])
    # The release's process is up and the playbook waits for its health check: kill.
    await eventually(lambda: app_processes(stack, name), "the release started", within=90)
    killable_stack.kill(doomed)
    gate.touch()

    survivor = await killable_stack.worker()
    done = await stack.finished(task["id"], within=180)
    survived = killable_stack.stop(survivor)

    assert done["status"] == "COMPLETED", done["error"]
    url = done["result"]["deployed_url"]
    assert await served(url) == {"service": name, "message": "hello"}
    # One release: one row, serving, one process of the app, the one its supervisor names.
    assert await stack.releases_of(task["id"]) == [("RUNNING", done["result"]["release"])]
    child = child_of(stack.apps_root / name, done["result"]["release"])
    assert app_processes(stack, name) == {child}
    # The playbook really ran twice: the killed attempt and the one that finished.
    attempts = await stack.playbook_attempts(task["id"], done["result"]["release"])
    assert max(attempts) >= 2, attempts
    assert survived == 0, killable_stack.log.read_text()[-3000:]
