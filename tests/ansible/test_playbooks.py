"""The playbooks of deploy/ansible against a real sshd on loopback, run by the real runner."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from activities.ansible import AnsibleRunner, RunnerEvent, SshTarget
from tests.ansible.helpers import answers, deploy, pid_alive, stop
from tests.servers import free_port


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


def test_stop_of_an_unknown_app_succeeds(
    runner: AnsibleRunner, target: SshTarget, apps_root: Path
) -> None:
    run = stop(runner, target, apps_root)
    assert run.ok and run.data == {"app_found": False}


def test_deploy_without_its_variables_fails_at_the_check(
    runner: AnsibleRunner, target: SshTarget, apps_root: Path
) -> None:
    run = runner.run("deploy.yml", target, {"apps_root": str(apps_root), "release": "r1"})
    assert not run.ok
    assert run.failed_task == "Check the variables"
    assert "app_name" in (run.failed_msg or "")
    assert list(apps_root.iterdir()) == []
