"""The deterministic ``scripted`` agent: follows a script file, for fast tests and the demo.

The runner is deploy/images/agents/scripted/scripted_agent.py (standard library only, installed
into the scripted Worker image at :data:`RUNNER_PATH`); its docstring documents the script and the
JSON lines it prints, which this adapter parses. The script travels as a file the Worker writes
before the run (``{home}/scripted-agent/script.json``); without one the runner reads
``$SCRIPTED_AGENT_SCRIPT``.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from core.contracts.agents import AgentEvent, AgentResult
from core.paths import DEPLOY_DIR
from infra.agents.base import (
    AgentCommand,
    AgentFile,
    AgentRequest,
    JsonLinesAdapter,
)

# Where the scripted image installs the runner.
RUNNER_PATH = "/usr/local/lib/orchestrator/scripted_agent.py"
# The runner in this repository (for the image build and for running it on the host in tests).
RUNNER_SOURCE = DEPLOY_DIR / "images" / "agents" / "scripted" / "scripted_agent.py"


class ScriptedAdapter(JsonLinesAdapter):
    name = "scripted"

    def __init__(
        self,
        script: dict[str, Any] | None = None,
        runner: str = RUNNER_PATH,
        python: str = "python3",
    ) -> None:
        self.script = script
        self.runner = runner
        self.python = python

    def command(self, request: AgentRequest) -> AgentCommand:
        argv = [self.python, self.runner, "--workdir", request.workdir]
        files = []
        if self.script is not None:
            path = posixpath.join(request.home, "scripted-agent", "script.json")
            files.append(AgentFile(path=path, content=json.dumps(self.script, indent=2) + "\n"))
            argv += ["--script", path]
        argv += ["--", request.prompt]
        return AgentCommand(argv=argv, env={}, files=files, cwd=request.workdir)

    def events(self, obj: dict[str, Any]) -> list[AgentEvent]:
        kind = obj.get("type")
        if kind in ("write", "delete"):
            return [
                AgentEvent(kind="file_change", text=str(obj.get("path")), data={"action": kind})
            ]
        if kind == "run":
            data = {"exit_code": obj.get("exit_code"), "output": obj.get("output", "")}
            return [AgentEvent(kind="command", text=" ".join(obj.get("argv") or []), data=data)]
        if kind == "commit":
            return [
                AgentEvent(
                    kind="tool", text=f"commit {obj.get('sha')}", data={"sha": obj.get("sha")}
                )
            ]
        if kind == "error":
            return [AgentEvent(kind="error", text=str(obj.get("message")))]
        if kind == "result":
            return [
                AgentEvent(
                    kind="message",
                    text=str(obj.get("summary") or ""),
                    data={"status": obj.get("status")},
                )
            ]
        return []

    def fold(self, objs: list[dict[str, Any]], exit_code: int, workdir: str) -> AgentResult:
        final = next((o for o in reversed(objs) if o.get("type") == "result"), None)
        if final is None:
            return AgentResult(
                status="failed",
                raw_error=f"scripted agent exited with {exit_code} without a result",
            )
        status = final.get("status")
        errors = [str(o.get("message")) for o in objs if o.get("type") == "error"]
        if status not in ("completed", "blocked", "failed"):
            status, errors = "failed", [*errors, f"unknown status {status!r}"]
        return AgentResult(
            status=status,
            summary=str(final.get("summary") or ""),
            question=final.get("question") if status == "blocked" else None,
            files_changed=[str(p) for p in final.get("files_changed") or []],
            commit=final.get("commit"),
            raw_error="; ".join(errors) or (final.get("summary") if status == "failed" else None),
        )
