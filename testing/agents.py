"""Run the real agent CLIs (and the scripted runner) on the host, the way a Worker runs them.

The CLIs install once per cache from the npm registry into ``test_images_root()/npm``, at the
versions the Worker images pin (every package of deploy/images/agents/<agent>/npm-packages.txt).
A recipe with its own ``.npmrc`` (droid's) installs into a prefix of its own with that file, as
the image builder does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from core.contracts.agents import AgentEvent, AgentResult
from core.paths import REPO_ROOT
from infra.agents.base import AgentAdapter, AgentRequest
from infra.images import NPMRC, npm_package_name, read_list
from testing.servers import test_images_root

REPO = REPO_ROOT
CLI_AGENTS = ("claude", "codex", "droid")


def recipe_dir(agent: str) -> Path:
    return REPO / "deploy" / "images" / "agents" / agent


def pinned_packages(agent: str) -> list[str]:
    specs = read_list(recipe_dir(agent) / "npm-packages.txt")
    if not specs:
        raise RuntimeError(f"{agent} pins no npm package in {recipe_dir(agent)}")
    return specs


def _installed_version(prefix: Path, name: str) -> str | None:
    manifest = prefix / "node_modules" / name / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def _prefix(agent: str) -> Path:
    root = test_images_root() / "npm"
    return root / agent if (recipe_dir(agent) / NPMRC).is_file() else root


def install_clis() -> dict[str, Path]:
    """``{"claude": path, "codex": path, "droid": path}``, installing what is missing or at
    another version."""
    if shutil.which("npm") is None:
        raise RuntimeError("npm is not installed; run `make install`")
    for agent in CLI_AGENTS:
        prefix = _prefix(agent)
        prefix.mkdir(parents=True, exist_ok=True)
        npmrc = recipe_dir(agent) / NPMRC
        if npmrc.is_file():
            shutil.copyfile(npmrc, prefix / NPMRC)
        missing = [
            spec
            for spec in pinned_packages(agent)
            if _installed_version(prefix, npm_package_name(spec)) != spec.rpartition("@")[2]
        ]
        if missing:
            subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix), *missing],
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=600,
            )
    return {agent: _prefix(agent) / "node_modules" / ".bin" / agent for agent in CLI_AGENTS}


@dataclass
class AgentRun:
    result: AgentResult
    events: list[AgentEvent]
    lines: list[str]
    stderr: str
    exit_code: int
    seconds: float


def run_agent(adapter: AgentAdapter, request: AgentRequest, timeout: float = 120.0) -> AgentRun:
    """Write the command's files, run it with a minimal environment (nothing of the host's but
    PATH), stdin closed, and parse its output live and at the end."""
    command = adapter.command(request)
    for file in command.files:
        path = Path(file.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(file.content)
        path.chmod(file.mode)
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", **command.env}
    started = time.monotonic()
    proc = subprocess.Popen(
        command.argv,
        cwd=command.cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"{adapter.name} ran past {timeout}s: {stdout[-2000:]} {stderr[-2000:]}"
        ) from exc
    lines = stdout.splitlines()
    events = [event for line in lines for event in adapter.parse_line(line)]
    result = adapter.result(lines, proc.returncode, workdir=request.workdir)
    return AgentRun(result, events, lines, stderr, proc.returncode, time.monotonic() - started)
