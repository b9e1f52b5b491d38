"""The service template as the scaffold activity renders it: tests pass, the manifest is true."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from temporalio.testing import ActivityEnvironment

from activities.forge import ForgeActivities, ScaffoldRequest
from core.paths import SERVICE_TEMPLATE_DIR
from infra.forges.local import LocalForge
from testing.servers import free_port
from testing.workflows import git_out

# python3 on PATH is this interpreter, as python3 is in a Worker image.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


async def render(tmp_path: Path, modules: list[str]) -> Path:
    """Scaffold through the activity, then clone: exactly what a Developer stage will check out."""
    activities = ForgeActivities(SERVICE_TEMPLATE_DIR, LocalForge(tmp_path / "forge"))
    result = await ActivityEnvironment().run(
        activities.scaffold_repository,
        ScaffoldRequest(project_id="p", project_name="demo", modules=modules),
    )
    clone = tmp_path / "clone"
    git_out(tmp_path, "clone", "--quiet", result.repository, str(clone))
    return clone


@pytest.mark.parametrize(
    ("modules", "present", "absent"),
    [
        (["backend"], {"app/server.py", "tests/test_server.py"}, {"app/bot.py"}),
        (["tg_bot"], {"app/bot.py", "tests/test_bot.py"}, {"app/server.py"}),
        (["backend", "tg_bot"], {"app/server.py", "app/bot.py", "tests/test_bot.py"}, set()),
    ],
)
async def test_rendered_project_passes_make_test(
    tmp_path: Path, modules: list[str], present: set[str], absent: set[str]
) -> None:
    project = await render(tmp_path, modules)
    files = set(git_out(project, "ls-files").splitlines())
    assert present <= files and not (absent & files)
    assert {"Makefile", "README.md", ".orchestrator.yml", ".gitignore"} <= files

    tested = await asyncio.to_thread(make_test, project)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "OK" in tested.stderr  # unittest reports on stderr

    manifest = yaml.safe_load((project / ".orchestrator.yml").read_text())
    assert manifest["name"] == "demo" and manifest["test"] == "make test"
    assert [s["name"] for s in manifest["services"]] == modules
    if "tg_bot" in modules:
        bot = manifest["services"][-1]
        assert bot["env"]["required"] == ["TELEGRAM_BOT_TOKEN"]


async def test_manifest_says_truly_how_the_backend_runs(tmp_path: Path) -> None:
    """Start the service exactly as the manifest says, and ask its health path."""
    project = await render(tmp_path, ["backend"])
    (service,) = yaml.safe_load((project / ".orchestrator.yml").read_text())["services"]
    assert await asyncio.to_thread(run_and_check_health, project, service) == 0


def make_test(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "test"], cwd=project, env=ENV, capture_output=True, text=True, timeout=60
    )


def run_and_check_health(project: Path, service: dict) -> int:
    """Run the service's command with its port variable set; GET its health path; stop it."""
    port = free_port()
    proc = subprocess.Popen(
        shlex.split(service["command"]),
        cwd=project,
        env={**ENV, service["port_env"]: str(port), "HOST": "127.0.0.1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}{service['health_path']}"
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, "the service exited"
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    assert response.status == 200
                    assert json.load(response) == {"status": "ok"}
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(10)
    return proc.returncode  # 0: SIGTERM is a clean stop
