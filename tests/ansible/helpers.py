"""Helpers for the Ansible tests: deploy and stop the test app, probe it."""

from __future__ import annotations

from pathlib import Path

import httpx

from activities.ansible import AnsibleRunner, OnEvent, PlaybookRun, SshTarget


def deploy(
    runner: AnsibleRunner,
    target: SshTarget,
    repo: Path,
    apps_root: Path,
    release: str,
    port: int,
    ref: str = "main",
    secret_env: dict[str, str] | None = None,
    on_event: OnEvent | None = None,
) -> PlaybookRun:
    extravars = {
        "app_name": "hello",
        "release": release,
        "repo_url": str(repo),
        "ref": ref,
        "app_port": port,
        "start_command": "python3 -m app",
        "env": {"HOST": "127.0.0.1", "LOG_LEVEL": "INFO"},
        "apps_root": str(apps_root),
        # A broken release should fail in a few seconds, not thirty.
        "health_retries": 3,
        "health_delay": 0.3,
    }
    secrets = {"secret_env": secret_env} if secret_env else None
    return runner.run("deploy.yml", target, extravars, secrets, on_event, timeout_s=120)


def stop(runner: AnsibleRunner, target: SshTarget, apps_root: Path) -> PlaybookRun:
    return runner.run("stop.yml", target, {"app_name": "hello", "apps_root": str(apps_root)})


def answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
