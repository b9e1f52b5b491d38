"""Run the real agent CLIs (and the scripted runner) on the host, the way a Worker runs them.

The CLIs install once per cache from the npm registry into ``test_images_root()/npm``, at the
versions the Worker images pin (deploy/images/agents/<agent>/npm-packages.txt when present).
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
from testing.servers import test_images_root

REPO = REPO_ROOT
# Used when the image builder has no pin file for the agent (yet).
DEFAULT_PACKAGES = {
    "claude": "@anthropic-ai/claude-code@2.1.331",
    "codex": "@openai/codex@0.169.0",
}


def pinned_package(agent: str) -> str:
    pins = REPO / "deploy" / "images" / "agents" / agent / "npm-packages.txt"
    if pins.exists():
        specs = [
            line.split("#")[0].strip()
            for line in pins.read_text().splitlines()
            if line.split("#")[0].strip()
        ]
        if specs:
            return specs[0]
    return DEFAULT_PACKAGES[agent]


def _split(spec: str) -> tuple[str, str]:
    name, _, version = spec.rpartition("@")
    return name, version


def _installed_version(prefix: Path, name: str) -> str | None:
    manifest = prefix / "node_modules" / name / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def install_clis() -> dict[str, Path]:
    """``{"claude": path, "codex": path}``, installing what is missing or at another version."""
    if shutil.which("npm") is None:
        raise RuntimeError("npm is not installed; run `make install`")
    prefix = test_images_root() / "npm"
    prefix.mkdir(parents=True, exist_ok=True)
    specs = {agent: pinned_package(agent) for agent in DEFAULT_PACKAGES}
    missing = [
        s for s in specs.values() if _installed_version(prefix, _split(s)[0]) != _split(s)[1]
    ]
    if missing:
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix), *missing],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=600,
        )
    return {agent: prefix / "node_modules" / ".bin" / agent for agent in specs}


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
