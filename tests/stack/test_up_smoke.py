"""The real `orchestrator up --detach` on its SQLite default, in a home and on ports of its own.

Nothing is given as an address (no TEMPORAL_ADDRESS, REDIS_URL or DATABASE_URL): the stack starts
every server itself, exactly as a person's first `orchestrator up` does. No model key is given
either, so a task without an agent ends after scaffolding and says how to configure one.

The demo (`make run`) runs the scripted agent in a Worker container. Its image lives in the
container service's storage: a stack's own podman (under its fresh home) would build it anew,
minutes each run, so that test gives the stack the session's container service (DOCKER_HOST),
whose storage keeps the image between runs (testing/servers.py test_images_root).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import docker
import httpx
import psutil
import pytest
import redis
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError

from cli.demo import ANTHROPIC_KEYS, OPENAI_KEYS
from cli.demo_notes import FAILING_TEST
from cli.demo_script import DEMO_FILES
from core.schedules import JOBS
from core.settings import Settings
from infra.containers import TASK_ID, ContainerRuntime, WorkerSpec
from infra.forges.local import LocalForge
from testing.apps import end_apps
from testing.images import tiny_image
from testing.servers import free_port
from testing.waiting import eventually
from tests.conftest import fresh_postgres_database
from tests.stack.test_state import assert_strangers_refused

FOREIGN = [
    f"{prefix}{name}"
    for prefix in ("", "ORCHESTRATOR_")
    for name in (
        "API_URL",
        "API_KEY",
        "DATABASE_URL",
        "REDIS_URL",
        "TEMPORAL_ADDRESS",
        "DOCKER_HOST",
        "DEFAULT_AGENT",
        "TELEGRAM_TOKEN",  # no bot: this stack has no Telegram to talk to
    )
] + [*ANTHROPIC_KEYS, *OPENAI_KEYS]  # the stack must not pick a real agent from this machine
NO_AGENT = "No coding agent is configured"
# The notes feature's files in its pull request, and pytest's count once it passes (the
# template's own tests and the feature's two).
NOTES_FILES = {"pyproject.toml", "uv.lock", "app/routes/notes.py", "tests/test_notes.py"}
TESTS_AFTER = 8
# A small script for the scripted agent: one round that writes, commits and completes.
PING_SCRIPT = {
    "rounds": [
        {
            "write": {"path": "app/ping.py", "content": 'def ping():\n    return "pong"\n'},
            "commit": "Add ping()",
            "report": "completed",
            "summary": "Added ping().",
        }
    ]
}
SERVICES = {
    *("temporal", "redis", "containers", "pypi-cache", "npm-cache"),
    *("api", "temporal-worker", "bridges"),
}
# Private upstream tokens, as a deployment with a private index sets them: only the caches' own
# processes hold them (the public upstreams these runs reach ignore them).
REGISTRY_TOKENS = {
    "ORCHESTRATOR_PYPI_INDEX_TOKEN": "pypi-smoke-SECRET-1f9e0c7d3b",
    "ORCHESTRATOR_NPM_REGISTRY_TOKEN": "npm_smokeSECRET8a2c4e6f0b",
}
ORCHESTRATOR = Path(sys.executable).parent / "orchestrator"


def workers_of(docker_client: docker.DockerClient, task_id: str) -> list[Any]:
    return list(docker_client.containers.list(all=True, filters={"label": f"{TASK_ID}={task_id}"}))


@dataclass
class Stack:
    home: Path
    env: dict[str, str]
    ports: dict[str, int]

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        command = (
            [str(ORCHESTRATOR)] if ORCHESTRATOR.exists() else [sys.executable, "-m", "cli.main"]
        )
        return subprocess.run(
            [*command, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def json(self, *args: str) -> Any:
        done = self.cli(*args, "--json")
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return json.loads(done.stdout)

    def state(self) -> dict[str, Any]:
        return json.loads((self.home / "stack.json").read_text())

    def pids(self) -> list[int]:
        current = self.state()
        return [current["supervisor_pid"], *(s["pid"] for s in current["services"] if s["pid"])]


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def processes_of(home: Path) -> list[psutil.Process]:
    """Processes that name the stack's home on their command line (podman, conmon, ...)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(str(home) in arg for arg in proc.info["cmdline"] or []):
                found.append(proc)
    return found


async def start_a_worker(docker_host: str) -> int:
    """A Worker on the stack's own container service; returns its process's host PID."""
    client = docker.DockerClient(base_url=docker_host, timeout=60)
    try:
        spec = WorkerSpec(
            image=await asyncio.to_thread(tiny_image, client),
            worker_id="smoke",
            task_id="smoke",
            workflow_id="engineering-smoke",
        )
        runtime = ContainerRuntime(client, Settings())
        container_id = await runtime.create_worker(spec)
        hello = await runtime.exec("smoke", ["sh", "-c", "echo hello"], workdir="/")
        assert (hello.exit_code, hello.stdout) == (0, "hello\n")
        return int(client.containers.get(container_id).attrs["State"]["Pid"])
    finally:
        client.close()


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {what}")
        time.sleep(0.05)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    ports = {
        "API_PORT": free_port(),
        "TEMPORAL_PORT": free_port(),
        "TEMPORAL_UI_PORT": free_port(),
        "REDIS_PORT": free_port(),
        "PYPI_CACHE_PORT": free_port(),
        "NPM_CACHE_PORT": free_port(),
        "LOCAL_TARGET_PORT": free_port(),
        "LOCAL_EDGE_HTTPS_PORT": free_port(),
        "LOCAL_EDGE_HTTP_PORT": free_port(),
        "LOCAL_EDGE_ADMIN_PORT": free_port(),
        "LOCAL_DATABASE_PORT": free_port(),
    }
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    env["ORCHESTRATOR_HOME"] = str(tmp_path / "home")
    env.update({f"ORCHESTRATOR_{name}": str(port) for name, port in ports.items()})
    created = Stack(home=tmp_path / "home", env=env, ports=ports)
    leftovers: list[int] = []
    try:
        yield created
    finally:
        with contextlib.suppress(Exception):
            leftovers = created.pids()
        if (created.home / "stack.json").exists():
            created.cli("down", timeout=120)
        for pid in leftovers:  # a failed test must not leave servers behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        end_apps(created.home / "target" / "apps")  # nor apps the demo deployed


async def wait_for_workflow(stack: Stack, workflow_id: str) -> WorkflowExecutionStatus:
    client = await Client.connect(
        f"127.0.0.1:{stack.ports['TEMPORAL_PORT']}", data_converter=pydantic_data_converter
    )
    handle = client.get_workflow_handle(workflow_id)
    deadline = time.monotonic() + 20
    while True:
        try:
            status = (await handle.describe()).status
        except RPCError:
            status = None  # the bridge has not started it yet
        if status in (WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.COMPLETED):
            return status
        assert time.monotonic() < deadline, f"{workflow_id} is {status} after 20s"
        await asyncio.sleep(0.05)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_private(home: Path) -> None:
    """The home, its databases, keys, queues' file and logs: readable by their owner only."""
    assert mode(home) == 0o700
    for folder in ("logs", "redis"):
        assert mode(home / folder) == 0o700, folder
    for name in (
        "stack.json",
        "redis_password",
        "redis/redis.conf",
        "api_key",
        "secret.key",
        "orchestrator.db",
        "temporal.sqlite",
    ):
        assert mode(home / name) == 0o600, name
    # The append-only files Redis made, and whatever the databases keep beside them (-wal, -shm).
    written = [*(home / "redis").rglob("*"), *home.glob("*.db-*"), *home.glob("*.sqlite-*")]
    assert any(p.name.endswith(".aof") for p in written)
    assert {p.name: mode(p) & 0o077 for p in written} == {p.name: 0 for p in written}


def leaks(stack: Stack, secrets: list[str], *shown: str) -> list[str]:
    """Where any of ``secrets`` is written: the state file, the logs, what the CLI showed, the
    command line of any process of this machine (ps shows every user's)."""
    places = {"shown": "\n".join(shown), "stack.json": (stack.home / "stack.json").read_text()}
    places.update({str(p): p.read_text(errors="replace") for p in (stack.home / "logs").iterdir()})
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            places[f"cmdline of {proc.info['pid']}"] = " ".join(proc.info["cmdline"] or [])
    return [place for place, text in places.items() if any(s in text for s in secrets)]


def assert_only_the_stack_gets_in(stack: Stack, *shown: str) -> None:
    """The embedded Redis refuses a client without the stack's password (every service of the
    stack has it, and worked); the password is in no log, state or command line."""
    port = stack.ports["REDIS_PORT"]
    assert_strangers_refused(port)
    password = (stack.home / "redis_password").read_text().strip()
    # The services have it in their environment (their owner's to read, as /proc/PID/environ is).
    bridges = psutil.Process(service(stack, "bridges")["pid"])
    assert f"orchestrator:{password}@" in bridges.environ()["REDIS_URL"]
    with redis.Redis(port=port, username="orchestrator", password=password) as client:
        # The bridges made their consumer group: they are in.
        assert client.xinfo_groups("engineering:queue")
    assert leaks(stack, [password], *shown) == []


def git_out(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_up_run_a_task_down(stack: Stack) -> None:
    stack.env.update(REGISTRY_TOKENS)
    up = await asyncio.to_thread(stack.json, "up", "--detach")
    assert up["status"] == "started"
    assert up["api_url"] == f"http://127.0.0.1:{stack.ports['API_PORT']}"
    again = await asyncio.to_thread(stack.json, "up", "--detach")
    assert again["status"] == "already_running"
    assert again["supervisor_pid"] == up["supervisor_pid"]

    project = stack.json("project", "create", "--name", "smoke", "--modules", "backend")
    started = stack.json("engineering", "start", "--project", "smoke", "--spec", "a /hello route")
    assert started["workflow_id"] == f"engineering-{started['task_id']}"
    assert started["project_id"] == project["id"]
    await wait_for_workflow(stack, started["workflow_id"])

    # No agent is configured (no model key, no --agent): the scaffold runs, then the task fails
    # saying how to configure one.
    watched = await asyncio.to_thread(stack.cli, "task", "watch", started["task_id"], timeout=120)
    assert watched.returncode == 1, (watched.stdout, watched.stderr)
    assert "scaffold" in watched.stdout
    assert "FAILED" in watched.stdout
    task = stack.json("task", "show", started["task_id"])
    assert task["status"] == "FAILED"
    assert NO_AGENT in task["error"]
    assert [e["stage"] for e in task["events"] if e["type"] == "stage_completed"] == ["scaffold"]
    assert stack.json("project", "show", "smoke")["repository"]

    status = stack.json("status")
    assert status["running"] is True
    assert {s["name"]: s["state"] for s in status["services"]} == dict.fromkeys(SERVICES, "running")
    # Nobody else on the wire: the task above went through Redis with the stack's password only.
    assert_only_the_stack_gets_in(stack, json.dumps(up), json.dumps(status), watched.stdout)
    # The private index tokens: in no log, state, command line or file of the home; the caches
    # have them (the npm cache's configuration names only the variable that holds its token).
    tokens = list(REGISTRY_TOKENS.values())
    assert leaks(stack, tokens, json.dumps(up), json.dumps(status), watched.stdout) == []
    files = [
        path
        for path in stack.home.rglob("*")
        if path.is_file() and path.relative_to(stack.home).parts[0] != "podman"  # images
    ]
    assert [p for p in files if any(t.encode() in p.read_bytes() for t in tokens)] == []
    environments = {
        name: str(psutil.Process(service(stack, name)["pid"]).environ()) for name in SERVICES
    }
    holders = {name for name, env in environments.items() if any(t in env for t in tokens)}
    assert holders == {"pypi-cache", "npm-cache"}
    assert_private(stack.home)
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(status["temporal_ui_url"])).status_code == 200
    # Every scheduled job has its Schedule, shown in the Web UI with its summary.
    assert await schedules_in_the_web_ui(status["temporal_ui_url"]) == SCHEDULED
    containers = next(s for s in status["services"] if s["name"] == "containers")
    assert containers["address"] == f"unix://{stack.home / 'podman' / 'docker.sock'}"
    worker_pid = await start_a_worker(containers["address"])
    assert running(worker_pid)
    assert processes_of(stack.home)  # the service and the Worker's conmon

    pids = stack.pids()
    assert len(pids) == 1 + len(SERVICES)
    down = await asyncio.to_thread(stack.json, "down")
    assert down["was_running"] is True
    assert down["killed"] == []  # all stopped on SIGTERM
    assert [pid for pid in pids if running(pid)] == []
    assert not running(worker_pid)
    assert processes_of(stack.home) == []
    assert [p for p in stack.ports.values() if listening(p)] == []
    assert not (stack.home / "stack.json").exists()
    assert stack.json("status")["running"] is False

    # Up again: the same Schedules, one per job, none added.
    again = await asyncio.to_thread(stack.json, "up", "--detach")
    listed = stack.json("schedule", "list")
    assert sorted((s["name"], s["exists"]) for s in listed) == sorted(
        (job.name, True) for job in JOBS
    )
    assert await schedules_in_the_web_ui(stack.json("status")["temporal_ui_url"]) == SCHEDULED
    assert (await asyncio.to_thread(stack.json, "down"))["was_running"] is True
    assert again["status"] == "started"


# Each job's Schedule id on the stack's queue, and its summary.
SCHEDULED = sorted((f"orchestrator-{job.name}", job.summary) for job in JOBS)


async def schedules_in_the_web_ui(ui_url: str) -> list[tuple[str, str]]:
    """(id, summary) of each Schedule, as the Temporal Web UI's own API lists them."""
    async with httpx.AsyncClient(timeout=10) as http:
        listed = await http.get(f"{ui_url.rstrip('/')}/api/v1/namespaces/default/schedules")
    assert listed.status_code == 200, listed.text
    found = []
    for schedule in listed.json()["schedules"]:
        summary = schedule["memo"]["fields"]["summary"]["data"]
        found.append((schedule["scheduleId"], json.loads(base64.b64decode(summary))))
    return sorted(found)


async def test_the_demo_builds_a_database_feature_with_a_package_to_a_pull_request(
    stack: Stack,
    docker_host: str,
    docker_client: docker.DockerClient,
    scripted_image: str,
    postgresql_image: str,
) -> None:
    """`make run`: the demo starts the stack itself; on a project from the app template the
    scripted agent installs python-slugify and adds notes in PostgreSQL with one failing pytest
    test, which the Tester names from the JUnit XML; fixed in round 2, the pull request follows
    with pytest's count. Its branch then goes live on the local target at its HTTPS name, with
    its packages and its own PostgreSQL database there, where the demo's note is written and
    read back."""
    stack.env["DOCKER_HOST"] = docker_host  # where the images are kept (see the top)
    done = await asyncio.to_thread(stack.cli, "demo", "--json", timeout=600)
    assert done.returncode == 0, (done.stdout, done.stderr)
    demo = json.loads(done.stdout)
    assert "deterministic scripted agent stands in for a real coding agent" in done.stderr
    assert "python-slugify" in done.stderr
    assert (demo["status"], demo["agent"], demo["error"]) == ("COMPLETED", "scripted", None)
    assert demo["template"] == "app"
    assert demo["result"]["stages"] == ["scaffold", "developer", "tester", "pull_request"]
    assert demo["rounds"] == 2
    assert (demo["test_outcome"]["passed"], demo["test_outcome"]["failed"]) == (TESTS_AFTER, 0)
    assert NOTES_FILES <= set(demo["files_changed"])
    # Live at its name, with a database of its own: the note the demo posted is read back.
    assert (demo["deploy_status"], demo["deploy_error"]) == ("COMPLETED", None)
    https = stack.ports["LOCAL_EDGE_HTTPS_PORT"]
    assert demo["deployed_url"] == f"https://{demo['project_name']}.localhost:{https}/"
    role = "app_" + demo["project_name"].replace("-", "_")
    assert (demo["project"], demo["runtime"], demo["database"]) == (
        demo["project_name"],
        "process",
        role,
    )
    assert demo["health"]["status"] == 200
    posted, read = demo["answers"]
    assert (posted["method"], posted["status"]) == ("POST", 201), posted
    assert json.loads(posted["body"])["slug"] == "hello-from-the-demo"
    assert (read["method"], read["status"]) == ("GET", 200), read
    assert json.loads(read["body"])["title"] == "Hello from the demo"
    # Watched: the app-health Schedule's run finds it up; every job has its Schedule.
    watched = demo["watched"]
    assert watched["app_health"]["up"] is True, watched
    assert watched["run"].startswith("orchestrator-app-health-")
    assert [job["name"] for job in watched["schedules"]] == [job.name for job in JOBS]
    assert watched["open_incidents"] == 0

    # Round 1's failing test, named from pytest's JUnit XML, and round 2's pass.
    events = stack.json("task", "show", demo["task_id"])["events"]
    tester = [e for e in events if e["stage"] == "tester" and e["type"] == "stage_completed"]
    assert [e["data"]["failing_tests"] for e in tester] == [[FAILING_TEST], []]

    [pull] = stack.json("pr", "list", "--task", demo["task_id"])
    repo = LocalForge(stack.home / "forge").path(pull["repo_full_name"])
    lock = git_out(repo, "show", f"{pull['head_sha']}:uv.lock")
    assert 'name = "python-slugify"' in lock and "127.0.0.1" not in lock
    # The Worker and its sidecars go right after the task's end is recorded.
    await eventually(
        lambda: not workers_of(docker_client, demo["task_id"]), "the task's containers to go"
    )
    down = await asyncio.to_thread(stack.json, "down")
    assert down["was_running"] is True and down["killed"] == []


async def test_the_demo_of_the_service_template_opens_a_pull_request_and_deploys_it(
    stack: Stack, docker_host: str, docker_client: docker.DockerClient, scripted_image: str
) -> None:
    """`make run -- --template service`: the scripted agent's feature ends in a pull request
    whose branch holds it, its tests passed, and that branch answers at its URL on a deploy
    target the demo made on this machine."""
    stack.env["DOCKER_HOST"] = docker_host  # where the scripted image is kept (see the top)
    done = await asyncio.to_thread(
        stack.cli, "demo", "--template", "service", "--json", timeout=600
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    demo = json.loads(done.stdout)
    assert "deterministic scripted agent stands in for a real coding agent" in done.stderr
    assert (demo["status"], demo["agent"], demo["error"]) == ("COMPLETED", "scripted", None)
    assert demo["workflow_id"] == f"engineering-{demo['task_id']}"
    assert demo["workflow_url"].endswith(f"/workflows/{demo['workflow_id']}")
    scaffold = f"scaffold-{demo['project_id']}"
    assert set(demo["workflow_urls"]) == {demo["workflow_id"], scaffold, demo["deploy_workflow_id"]}
    assert demo["workflow_urls"][scaffold].endswith(f"/workflows/{scaffold}")
    assert demo["result"]["stages"] == ["scaffold", "developer", "tester", "pull_request"]
    assert sorted(demo["files_changed"]) == sorted(DEMO_FILES)
    assert demo["rounds"] == 1
    assert demo["test_outcome"]["failed"] == 0 and demo["test_outcome"]["passed"] > 0

    # The pull request is there, and its branch in the forge holds the feature and its tests.
    [pull] = stack.json("pr", "list", "--task", demo["task_id"])
    assert pull["url"] == demo["pr_url"] and pull["id"] == demo["pull_request_id"]
    assert pull["branch"] == demo["branch"] == f"task/{demo['task_id']}"
    repo = LocalForge(stack.home / "forge").path(pull["repo_full_name"])
    head = git_out(repo, "rev-parse", f"refs/heads/{pull['branch']}")
    assert head == pull["head_sha"] == demo["commit_sha"]
    changed = git_out(repo, "diff", "--name-only", f"{pull['base']}...{pull['branch']}")
    assert sorted(changed.splitlines()) == sorted(DEMO_FILES)
    assert "greet_route" in git_out(repo, "show", f"{head}:app/server.py")
    # The Worker and its sidecars go right after the task's end is recorded.
    await eventually(
        lambda: not workers_of(docker_client, demo["task_id"]), "the task's containers to go"
    )

    # The branch is live on the local target at its HTTPS name, behind the target's edge: the
    # feature answers there to a client trusting the edge's CA (curl resolves *.localhost).
    assert (demo["deploy_status"], demo["deploy_error"]) == ("COMPLETED", None)
    url = demo["deployed_url"]
    https = stack.ports["LOCAL_EDGE_HTTPS_PORT"]
    assert url == f"https://{demo['project_name']}.localhost:{https}/"
    assert demo["health"]["status"] == 200
    [local] = stack.json("server", "list")
    assert (local["handle"], local["status"], local["base_domain"]) == (
        "local",
        "READY",
        "localhost",
    )
    ca = stack.home / "edge-ca.pem"
    ca.write_text(local["edge_ca"])

    def curl(path: str) -> subprocess.CompletedProcess[str]:
        command = ["curl", "-sS", "--max-time", "10", "--cacert", str(ca), f"{url}{path}"]
        return subprocess.run(command, capture_output=True, text=True)

    greeted = curl("greet/world")
    assert greeted.returncode == 0, greeted.stderr
    assert json.loads(greeted.stdout) == {"message": "Hello, world!"}
    [release] = stack.json("deploy", "list", "--project", demo["project_name"])
    assert (release["status"], release["url"]) == ("RUNNING", url)
    gone = await asyncio.to_thread(stack.json, "deploy", "undeploy", demo["project_name"], "--wait")
    assert gone["status"] == "COMPLETED"
    assert curl("health").returncode != 0  # the edge knows the name no more

    down = await asyncio.to_thread(stack.json, "down")
    assert down["was_running"] is True and down["killed"] == []
    assert down["local_target"] is True
    assert not listening(stack.ports["LOCAL_TARGET_PORT"])


def service(stack: Stack, name: str) -> dict[str, Any]:
    return next(s for s in stack.state()["services"] if s["name"] == name)


async def test_a_crashed_child_restarts_and_all_die_with_the_supervisor(stack: Stack) -> None:
    await asyncio.to_thread(stack.json, "up", "--detach")
    crashed = service(stack, "temporal-worker")["pid"]
    os.kill(crashed, signal.SIGKILL)

    def restarted() -> bool:
        worker = service(stack, "temporal-worker")
        return worker["pid"] not in (None, crashed) and worker["healthy"]

    await asyncio.to_thread(wait_until, restarted, 60, "the worker restarted and healthy")
    assert service(stack, "temporal-worker")["restarts"] == 1
    states = {s["name"]: s["state"] for s in stack.json("status")["services"]}
    assert states == dict.fromkeys(SERVICES, "running")

    current = stack.state()
    children = [s["pid"] for s in current["services"]]
    assert len(children) == len(SERVICES)
    os.kill(current["supervisor_pid"], signal.SIGKILL)
    # PR_SET_PDEATHSIG: the kernel sends each child SIGTERM when the supervisor dies.
    await asyncio.to_thread(
        wait_until, lambda: not any(running(pid) for pid in children), 30, "children gone"
    )
    assert stack.json("status")["running"] is False
    assert [p for p in stack.ports.values() if listening(p)] == []


async def test_up_uses_servers_it_is_given(
    stack: Stack,
    temporal_address: str,
    redis_url: str,
    redis: Any,
    postgres_server_url: str,
    docker_host: str,
    scripted_image: str,
    tmp_path: Path,
) -> None:
    """TEMPORAL_ADDRESS, REDIS_URL, DOCKER_HOST and a PostgreSQL DATABASE_URL: `up` starts only
    our services, the whole pipeline (to the pull request) runs on PostgreSQL, and `down` leaves
    those servers alone."""
    database_url = await fresh_postgres_database(postgres_server_url)
    stack.env.update(
        TEMPORAL_ADDRESS=temporal_address,
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        DOCKER_HOST=docker_host,
        # The test Temporal server is shared: keep this stack's runs on a queue of its own.
        ORCHESTRATOR_TEMPORAL_TASK_QUEUE=f"smoke-{uuid.uuid4().hex[:8]}",
    )
    up = await asyncio.to_thread(stack.json, "up", "--detach")
    status = stack.json("status")
    # The servers given want passwords (testing/servers.py): the stack shows neither.
    passwords = [urlsplit(url).password or "" for url in (redis_url, database_url)]
    assert all(passwords)
    assert leaks(stack, passwords, json.dumps(up), json.dumps(status)) == []
    states = {s["name"]: s["state"] for s in status["services"]}
    assert states == {
        "temporal": "external",
        "redis": "external",
        "database": "external",
        "containers": "external",
        "pypi-cache": "running",
        "npm-cache": "running",
        "api": "running",
        "temporal-worker": "running",
        "bridges": "running",
    }

    stack.json("project", "create", "--name", "on-postgres")
    script = tmp_path / "script.json"
    script.write_text(json.dumps(PING_SCRIPT))
    started = stack.json(
        "engineering", "start", "--project", "on-postgres", "--spec", "add ping()",
        "--script", str(script),
    )  # fmt: skip
    waited = await asyncio.to_thread(
        stack.cli, "engineering", "wait", started["task_id"], "--timeout", "180"
    )
    assert waited.returncode == 0, (waited.stdout, waited.stderr)
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        row = await conn.fetchrow("SELECT status FROM tasks WHERE id = $1", started["task_id"])
        pull = await conn.fetchrow(
            "SELECT branch FROM pull_requests WHERE task_id = $1", started["task_id"]
        )
    finally:
        await conn.close()
    assert row["status"] == "COMPLETED"
    assert pull["branch"] == f"task/{started['task_id']}"

    await asyncio.to_thread(stack.json, "down")
    assert await redis.ping()  # the servers we were given still run
    assert docker.DockerClient(base_url=docker_host).ping()
    client = await Client.connect(temporal_address)
    assert await client.service_client.check_health()
