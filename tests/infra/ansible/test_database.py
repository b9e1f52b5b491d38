"""An app's PostgreSQL database on the deploy target: the server's own cluster (real PostgreSQL,
run by deploy.yml through files/release.py over the loopback SSH target), a role and a database
per app, the release command before the release starts, and undeploy keeping or dropping it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import httpx

from infra.ansible import MASK, AnsibleRunner, PlaybookRun, RunnerEvent, SshTarget
from testing.apps import (
    APP,
    answers,
    child_of,
    cluster_sql,
    database_of,
    deploy,
    pid_alive,
    pid_of,
    processes_in,
    undeploy,
)
from testing.servers import free_port
from testing.waiting import eventually

MIGRATE = "python -m app.migrate"


def new_url(apps_root: Path, name: str = "app_notes") -> tuple[str, str]:
    """A URL as the orchestrator makes one per project, and its password."""
    password = f"Pw-{uuid.uuid4().hex}"
    url = f"postgresql://{name}:{password}@127.0.0.1:{database_of(apps_root).port}/{name}"
    return url, password


def deploy_notes(
    runner: AnsibleRunner,
    target: SshTarget,
    repo: Path,
    apps_root: Path,
    release: str,
    port: int,
    url: str,
    events: list[RunnerEvent] | None = None,
    release_command: str = MIGRATE,
) -> PlaybookRun:
    return deploy(
        runner, target, repo, apps_root, release, port,
        database_url=url,
        release_command=release_command, on_event=events.append if events is not None else None,
        extravars={"start_command": "python3 -m app", "health_retries": 20},
    )  # fmt: skip


def notes(port: int) -> list[str]:
    response = httpx.get(f"http://127.0.0.1:{port}/notes", timeout=10)
    assert response.status_code == 200, response.text
    return list(response.json()["notes"])


def write(port: int, body: str) -> None:
    response = httpx.post(f"http://127.0.0.1:{port}/notes", content=body, timeout=10)
    assert response.status_code == 200, response.text


def test_an_apps_rows_outlive_its_releases_which_share_one_environment_and_no_password_leaks(
    runner: AnsibleRunner, target: SshTarget, notes_repo: Path, apps_root: Path
) -> None:
    port = free_port()
    url, password = new_url(apps_root)
    events: list[RunnerEvent] = []
    first = deploy_notes(runner, target, notes_repo, apps_root, "n1", port, url, events)
    assert first.ok, first.failed_msg
    assert first.data["database"] == "app_notes"
    write(port, "kept")
    assert notes(port) == ["kept"]

    second = deploy_notes(runner, target, notes_repo, apps_root, "n2", port, url, events)
    assert second.ok, second.failed_msg
    assert notes(port) == ["kept"]  # the new release's migration kept the table and its row

    # The same requirements.txt: one environment, built by the first release, linked by both.
    releases = apps_root / APP / "releases"
    venv = (releases / "n1" / ".venv").resolve()
    assert (releases / "n2" / ".venv").resolve() == venv
    assert venv.parent == apps_root / APP / "venvs" and (venv / ".complete").exists()
    assert second.data["release_s"] < first.data["release_s"], (first.data, second.data)

    # The password is in the release's .env and the URL only: not in what Ansible said (nor
    # masked there: the playbook never printed it), the cluster's log, or our saved state.
    for run in (first, second):
        assert password not in run.stdout_tail
        for text in (run.failed_msg or "", json.dumps(run.data)):
            assert password not in text and MASK not in text
    assert events and all(password not in event.model_dump_json() for event in events)
    for log in (apps_root / ".postgres" / "logs").iterdir():
        assert password not in log.read_text(errors="replace"), log
    assert json.loads((apps_root / APP / "database.json").read_text()) == {
        "name": "app_notes",
        "role": "app_notes",
    }
    # Another app's role, with its own valid password, cannot get into this app's database.
    cluster_sql(apps_root, "CREATE ROLE other_app LOGIN PASSWORD 'other-pw'")
    assert "permission denied for database" in connect(apps_root, "other_app", "other-pw")


def connect(apps_root: Path, role: str, password: str) -> str:
    """What psql says connecting as ``role`` to the app's database over TCP (the password in
    its environment, not its argv)."""
    done = subprocess.run(
        [
            "/usr/lib/postgresql/15/bin/psql", "-X", "-h", "127.0.0.1",
            "-p", str(database_of(apps_root).port), "-U", role, "-d", "app_notes", "-c", "SELECT 1",
        ],
        env={**os.environ, "PGPASSWORD": password},
        capture_output=True,
        text=True,
    )  # fmt: skip
    return done.stderr


def test_a_failing_release_command_refuses_the_release_and_the_previous_serves(
    runner: AnsibleRunner, target: SshTarget, notes_repo: Path, apps_root: Path
) -> None:
    port = free_port()
    url, password = new_url(apps_root)
    assert deploy_notes(runner, target, notes_repo, apps_root, "n1", port, url).ok
    serving = pid_of(apps_root / APP, "n1")

    failing = (
        'echo "connecting to $DATABASE_URL"; python -c \'raise SystemExit("migration failed")\''
    )
    run = deploy_notes(
        runner, target, notes_repo, apps_root, "n2", port, url, release_command=failing
    )
    assert not run.ok
    assert run.failed_task == "Refuse a release whose release command fails"
    message = run.failed_msg or ""
    assert message.startswith("release n2: its release command"), message
    assert "migration failed" in message
    # What the command printed of the URL reaches no one with its password.
    assert password not in message and "connecting to postgresql://app_notes:" in message
    # n2 never started; n1 serves, the same process.
    assert not (apps_root / APP / "run" / "n2.pid").exists()
    assert pid_of(apps_root / APP, "n1") == serving and pid_alive(serving)
    assert notes(port) == []


def test_undeploy_keeps_the_database_unless_told_to_drop_it(
    runner: AnsibleRunner, target: SshTarget, notes_repo: Path, apps_root: Path
) -> None:
    port = free_port()
    url, _ = new_url(apps_root)
    assert deploy_notes(runner, target, notes_repo, apps_root, "n1", port, url).ok
    write(port, "survives an undeploy")

    kept = undeploy(runner, target, apps_root)
    assert kept.ok and kept.data == {"app_found": True}
    assert not answers(port)
    again = deploy_notes(runner, target, notes_repo, apps_root, "n1", port, url)
    assert again.ok, again.failed_msg
    assert notes(port) == ["survives an undeploy"]

    dropped = undeploy(runner, target, apps_root, drop_data=True)
    assert dropped.ok, dropped.failed_msg
    assert dropped.data == {"app_found": True, "data_dropped": True}
    assert (
        cluster_sql(apps_root, "SELECT datname FROM pg_database WHERE datname = 'app_notes'") == ""
    )
    assert cluster_sql(apps_root, "SELECT rolname FROM pg_roles WHERE rolname = 'app_notes'") == ""


def test_a_database_the_server_cannot_make_is_named_and_nothing_serves(
    runner: AnsibleRunner, target: SshTarget, notes_repo: Path, apps_root: Path
) -> None:
    port = free_port()
    app_dir = apps_root / APP
    bad, _ = new_url(apps_root, name="Notes-DB")
    run = deploy_notes(runner, target, notes_repo, apps_root, "n1", port, bad)
    assert not run.ok
    assert run.failed_task == "Refuse a database the server cannot make"
    assert "its DATABASE_URL names the role 'Notes-DB'" in (run.failed_msg or "")

    # Another process holds the cluster's port when it first starts: said so, nothing runs.
    url, _ = new_url(apps_root)
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", database_of(apps_root).port))
        foreign.listen()
        held = deploy_notes(runner, target, notes_repo, apps_root, "n1", port, url)
    assert not held.ok
    assert f"port {database_of(apps_root).port} is in use" in (held.failed_msg or "")
    assert not answers(port)
    assert not (app_dir / "current.json").exists()
    assert processes_in(app_dir) == set()
    assert not (apps_root / ".postgres" / "run" / "postgres.pid").exists()


async def test_a_postgres_killed_is_started_again_and_the_app_reaches_it_again(
    runner: AnsibleRunner, target: SshTarget, notes_repo: Path, apps_root: Path
) -> None:
    port = free_port()
    url, _ = new_url(apps_root)
    assert deploy_notes(runner, target, notes_repo, apps_root, "n1", port, url).ok
    write(port, "before the crash")
    cluster = apps_root / ".postgres"
    killed = child_of(cluster, "postgres")
    os.kill(killed, signal.SIGKILL)

    def reads_again() -> list[str] | None:
        response = httpx.get(f"http://127.0.0.1:{port}/notes", timeout=10)
        return response.json()["notes"] if response.status_code == 200 else None

    await eventually(
        lambda: child_of(cluster, "postgres") != killed, "the supervisor to start postgres again"
    )
    assert await eventually(reads_again, "the app to read its rows again", within=60) == [
        "before the crash"
    ]
    assert (
        "appctl: release postgres exited (status 137)"
        in (cluster / "logs" / "postgres.log").read_text()
    )
