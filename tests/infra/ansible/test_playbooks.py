"""The playbooks of deploy/ansible against a real sshd on loopback, run by the real runner."""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from pathlib import Path

import httpx

from infra.ansible import MASK, AnsibleRunner, RunnerEvent, SshTarget
from testing.apps import (
    answers,
    deploy,
    pid_alive,
    pid_of,
    processes_in,
    release_processes,
    stop,
    undeploy,
)
from testing.servers import free_port
from testing.waiting import eventually
from tests.infra.ansible.conftest import DEPENDENCY, MISSING_DEPENDENCY


def message(port: int) -> str:
    """What the app says on `/`: `hello` on main, `hello from v2` on the v2 branch."""
    return httpx.get(f"http://127.0.0.1:{port}/", timeout=5).json()["message"]


def test_provision_reports_this_machines_capacity(
    runner: AnsibleRunner, target: SshTarget, apps_root: Path
) -> None:
    events: list[RunnerEvent] = []
    root = apps_root / "nested" / "apps"
    run = runner.run("provision.yml", target, {"apps_root": str(root)}, on_event=events.append)

    assert run.ok, run.stdout_tail
    capacity = run.data["capacity"]
    assert capacity["cpus"] == os.cpu_count()
    total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    assert abs(capacity["memory_mb"] - total_mb) <= max(64, total_mb // 50)
    stat = os.statvfs(root)
    assert abs(capacity["disk_free_gb"] - stat.f_bavail * stat.f_frsize / 2**30) < 1
    assert run.data["apps_root"] == str(root) and root.is_dir()
    assert "Gather facts" in {event.task for event in events}
    # The run's private directory (key, inventory) is gone.
    assert list((runner.work_root / "runs").iterdir()) == []


def test_deploy_serves_and_a_failed_release_leaves_the_previous_serving(
    runner: AnsibleRunner, target: SshTarget, app_repo: Path, apps_root: Path
) -> None:
    port = free_port()
    first = deploy(runner, target, app_repo, apps_root, "r1", port)
    assert first.ok, first.stdout_tail
    assert first.data["release"] == "r1" and first.data["port"] == port
    assert first.data["previous_release"] is None
    assert httpx.get(f"http://127.0.0.1:{port}/").json()["service"] == "hello"
    app_dir = apps_root / "hello"
    assert (app_dir / "current").resolve() == app_dir / "releases" / "r1"

    # A broken release on a port of its own: r1 serves throughout.
    second = deploy(runner, target, app_repo, apps_root, "r2", free_port(), ref="broken")
    assert not second.ok
    assert second.failed_task == "Fail with the app's log"
    assert "boom: the broken release cannot start" in (second.failed_msg or "")
    assert answers(port)
    assert (app_dir / "current").resolve() == app_dir / "releases" / "r1"

    # A broken release on the same port takes it over, fails, and r1 is started again.
    third = deploy(runner, target, app_repo, apps_root, "r3", port, ref="broken")
    assert not third.ok and "boom" in (third.failed_msg or "")
    assert answers(port)
    assert (app_dir / "current").resolve() == app_dir / "releases" / "r1"

    # A good release on the same port replaces r1.
    fourth = deploy(runner, target, app_repo, apps_root, "r4", port)
    assert fourth.ok, fourth.stdout_tail
    assert fourth.data["previous_release"] == "r1"
    assert answers(port)
    assert (app_dir / "current").resolve() == app_dir / "releases" / "r4"
    assert not (app_dir / "run" / "r1.pid").exists()

    pid = int((app_dir / "run" / "r4.pid").read_text())
    stopped = stop(runner, target, apps_root)
    assert stopped.ok, stopped.stdout_tail
    assert not answers(port)
    assert not pid_alive(pid)
    assert list(app_dir.glob("run/*.pid")) == []


def test_a_release_gets_its_dependencies_and_one_that_cannot_leaves_the_previous_serving(
    runner: AnsibleRunner, target: SshTarget, app_repo: Path, apps_root: Path
) -> None:
    """A process app with a requirements.txt: an environment of the release's own, from PyPI,
    whose python3 runs the start command; a release whose dependencies cannot be installed
    fails before the serving one is touched, saying what pip said."""
    port = free_port()
    first = deploy(runner, target, app_repo, apps_root, "d1", port, ref="deps")
    assert first.ok, first.stdout_tail
    assert message(port) == f"hello with six {DEPENDENCY.split('==')[1]}"
    release_dir = apps_root / "hello" / "releases" / "d1"
    assert (release_dir / ".venv" / "bin" / "python3").exists()
    pid = pid_of(apps_root / "hello", "d1")

    second = deploy(runner, target, app_repo, apps_root, "d2", port, ref="bad-deps")
    assert not second.ok
    assert second.failed_task == "Refuse a release whose dependencies cannot be installed"
    assert "release d2: its dependencies (requirements.txt) could not be installed" in (
        second.failed_msg or ""
    )
    assert MISSING_DEPENDENCY.split("==")[0] in (second.failed_msg or "")
    # d1 served throughout: the same process, never stopped.
    assert message(port) == f"hello with six {DEPENDENCY.split('==')[1]}"
    assert pid_of(apps_root / "hello", "d1") == pid and pid_alive(pid)

    # A release without a requirements.txt has no environment and runs as before.
    third = deploy(runner, target, app_repo, apps_root, "d3", port)
    assert third.ok, third.stdout_tail
    assert message(port) == "hello"
    assert not (apps_root / "hello" / "releases" / "d3" / ".venv").exists()


def test_a_locked_project_gets_the_packages_its_lockfile_pins(
    runner: AnsibleRunner, target: SshTarget, app_repo: Path, apps_root: Path
) -> None:
    """A project locked with uv and no requirements.txt: the controller exports the lockfile's
    pins into the archive, and the server installs them, hash-checked, in the release's own
    environment; the dev group stays out."""
    port = free_port()
    run = deploy(runner, target, app_repo, apps_root, "l1", port, ref="locked")
    assert run.ok, run.stdout_tail
    assert message(port) == f"hello with six {DEPENDENCY.split('==')[1]}"
    release_dir = apps_root / "hello" / "releases" / "l1"
    assert "--hash=sha256:" in (release_dir / "requirements.txt").read_text()
    site = list((release_dir / ".venv" / "lib").glob("python3*/site-packages"))
    assert [p.name for p in site[0].glob("six-*.dist-info")] == ["six-1.17.0.dist-info"]
    assert not list(site[0].glob("iniconfig*"))


def test_stop_of_an_unknown_app_succeeds(
    runner: AnsibleRunner, target: SshTarget, apps_root: Path
) -> None:
    run = stop(runner, target, apps_root)
    assert run.ok and run.data == {"app_found": False}


def test_deploy_without_its_variables_fails_at_the_check(
    runner: AnsibleRunner, target: SshTarget, app_repo: Path, apps_root: Path
) -> None:
    run = runner.run("deploy.yml", target, {"apps_root": str(apps_root), "release": "r1"})
    assert not run.ok
    assert run.failed_task == "Check the variables"
    assert "app_name" in (run.failed_msg or "")
    assert list(apps_root.iterdir()) == []

    # An archive that is not on the controller is named before anything touches the target.
    missing = "/nonexistent/release.tar.gz"
    run = deploy(
        runner, target, app_repo, apps_root, "r1", free_port(), extravars={"archive": missing}
    )
    assert not run.ok
    assert run.failed_task == "Check the variables"
    assert missing in (run.failed_msg or "")
    assert list(apps_root.iterdir()) == []


def test_deploying_an_old_release_again_rolls_back_to_it(
    runner: AnsibleRunner, target: SshTarget, app_repo: Path, apps_root: Path
) -> None:
    port = free_port()
    app_dir = apps_root / "hello"
    assert deploy(runner, target, app_repo, apps_root, "r1", port).ok
    newer = deploy(runner, target, app_repo, apps_root, "r2", port, ref="v2")
    assert newer.ok, newer.stdout_tail
    assert message(port) == "hello from v2"
    newer_pid = pid_of(app_dir, "r2")
    # A file the archive does not hold (say, from an unpack a crash cut short) must not survive.
    stray = app_dir / "releases" / "r1" / "stray.txt"
    stray.write_text("left over")

    back = deploy(runner, target, app_repo, apps_root, "r1", port)
    assert back.ok, back.stdout_tail
    assert back.data["release"] == "r1" and back.data["previous_release"] == "r2"
    assert message(port) == "hello"
    assert (app_dir / "current").resolve() == app_dir / "releases" / "r1"
    assert not pid_alive(newer_pid) and not (app_dir / "run" / "r2.pid").exists()
    assert processes_in(app_dir) == release_processes(app_dir, "r1")
    assert not stray.exists()
    assert sorted(path.name for path in (app_dir / "releases").iterdir()) == ["r1", "r2"]


def test_a_port_another_process_holds_is_named_and_nothing_starts(
    runner: AnsibleRunner, target: SshTarget, app_repo: Path, apps_root: Path
) -> None:
    port = free_port()
    app_dir = apps_root / "hello"
    assert deploy(runner, target, app_repo, apps_root, "r1", port).ok
    serving = pid_of(app_dir, "r1")

    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        busy = foreign.getsockname()[1]
        run = deploy(runner, target, app_repo, apps_root, "r2", busy)

        assert not run.ok
        assert (run.failed_msg or "").startswith(
            f"port {busy} is in use on the server by another process"
        ), run.failed_msg

    assert answers(port) and pid_alive(serving)
    assert (app_dir / "current").resolve() == app_dir / "releases" / "r1"
    # r2 never ran: no process, no pid file, not a line of log.
    assert processes_in(app_dir) == release_processes(app_dir, "r1")
    assert pid_of(app_dir, "r1") == serving
    assert not (app_dir / "run" / "r2.pid").exists()
    assert not (app_dir / "logs" / "r2.log").exists()


async def test_a_deploy_cancelled_on_the_controller_stops_on_the_server_and_a_retry_serves(
    runner: AnsibleRunner, target: SshTarget, app_repo: Path, apps_root: Path
) -> None:
    port = free_port()
    app_dir = apps_root / "hello"
    killed = threading.Event()
    step = "Start the release, check its health and switch to it"

    def kill_at_the_release_step(event: RunnerEvent) -> None:
        if event.event == "runner_on_start" and event.task == step:
            killed.set()

    # The first attempt is cancelled while its release waits for a health path that never
    # answers: on the server, the step sees its SSH session gone and stops what it started.
    first = deploy(
        runner, target, app_repo, apps_root, "r1", port, on_event=kill_at_the_release_step,
        extravars={"health_path": "/never", "health_retries": 100}, cancel=killed,
    )  # fmt: skip
    assert not first.ok and first.failed_msg == "the playbook was cancelled"
    await eventually(
        lambda: (app_dir / "logs" / "r1.log").exists() and not processes_in(app_dir),
        "the cancelled attempt to stop the release it started",
    )
    assert not (app_dir / "current.json").exists()
    assert not answers(port)

    again = deploy(runner, target, app_repo, apps_root, "r1", port)
    assert again.ok, again.failed_msg
    assert answers(port)
    assert (app_dir / "current").resolve() == app_dir / "releases" / "r1"
    assert processes_in(app_dir) == release_processes(app_dir, "r1")


def test_undeploy_stops_the_app_and_removes_its_directory(
    runner: AnsibleRunner, target: SshTarget, app_repo: Path, apps_root: Path
) -> None:
    port = free_port()
    app_dir = apps_root / "hello"
    assert deploy(runner, target, app_repo, apps_root, "r1", port).ok
    pid = pid_of(app_dir, "r1")
    other_app = apps_root / "other"
    other_app.mkdir()

    run = undeploy(runner, target, apps_root)

    assert run.ok, run.stdout_tail
    assert run.data == {"app_found": True}
    assert not answers(port) and not pid_alive(pid)
    assert not app_dir.exists()
    assert other_app.is_dir()


def test_undeploy_of_an_unknown_app_succeeds(
    runner: AnsibleRunner, target: SshTarget, apps_root: Path
) -> None:
    run = undeploy(runner, target, apps_root)
    assert run.ok and run.data == {"app_found": False}


def test_secrets_reach_the_release_env_and_never_the_output(
    runner: AnsibleRunner, target: SshTarget, app_repo: Path, apps_root: Path
) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    secrets = {"API_TOKEN": secret}
    events: list[RunnerEvent] = []
    good = deploy(
        runner, target, app_repo, apps_root, "r1", free_port(), secret_env=secrets,
        on_event=events.append,
    )  # fmt: skip
    bad = deploy(
        runner, target, app_repo, apps_root, "r2", free_port(), ref="broken", secret_env=secrets,
        on_event=events.append,
    )  # fmt: skip
    assert good.ok, good.stdout_tail
    assert not bad.ok and "boom" in (bad.failed_msg or "")

    for release in ("r1", "r2"):
        env_file = apps_root / "hello" / "releases" / release / ".env"
        assert f"API_TOKEN={secret}" in env_file.read_text().splitlines()
        assert env_file.stat().st_mode & 0o777 == 0o600
    for run in (good, bad):
        assert secret not in run.stdout_tail
        # Not even masked: the playbook never printed the value for the runner to mask (the
        # stdout's banners are made of asterisks, so the mask is looked for elsewhere only).
        for text in (run.failed_msg or "", json.dumps(run.data)):
            assert secret not in text and MASK not in text
    assert events and all(secret not in event.model_dump_json() for event in events)
