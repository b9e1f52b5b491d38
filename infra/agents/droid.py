"""Factory's ``droid`` (npm ``@factory/cli``) run headless.

``droid exec -o stream-json --skip-permissions-unsafe -m custom:<model> --cwd DIR -- PROMPT``
prints one JSON object a line (captured from the real CLI 0.225.x against the model-API stand-in:
tests/infra/agents/fixtures/droid_*.jsonl):

- ``{"type": "system", "subtype": "init", "cwd", "session_id", "tools", "model", ...}``
- ``{"type": "message", "role": "user" | "assistant", "text", ...}``
- ``{"type": "tool_call", "id", "toolName", "parameters": {...}, ...}`` (``Create`` and ``Edit``
  take ``file_path``, ``Execute`` takes ``command``)
- ``{"type": "tool_result", "id", "toolId", "isError", "value", ...}``
- ``{"type": "error", "source": "agent_loop" | "cli", "message", ...}`` (a failed model call, then
  "Exec failed"; the exit code is 1 and no completion line follows)
- ``{"type": "completion", "finalText", "numTurns", "usage": {input_tokens, output_tokens,
  cache_read_input_tokens, cache_creation_input_tokens, factory_credits}, ...}`` (no cost in USD)

Model endpoint: a bring-your-own-key custom model in ``~/.factory/settings.json`` (``customModels``
with ``provider: anthropic``, i.e. the Messages API) whose ``baseUrl`` is the Worker's forwarder and
whose ``apiKey`` is the placeholder the gateway replaces; selected with ``-m custom:<model>``. No
Factory account or key is needed. droid reads ``~/.factory/AGENTS.md`` (our instructions) and the
repository's ``AGENTS.md`` by itself. ``FACTORY_AIRGAP_ENABLED`` switches on droid's Airgap Mode: no
sign-in, no feature-flag, settings, session-sync, usage or telemetry calls to Factory's servers
(without it every run tries Factory's API some thirty times; the Worker has no network, so
they fail, but nothing should try).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable
from typing import Any

from core.contracts.agents import AgentEvent, AgentResult
from infra.agents import base
from infra.agents.base import (
    KEY_PLACEHOLDER,
    AgentCommand,
    AgentFile,
    AgentRequest,
    JsonLinesAdapter,
    instructions_text,
)

DEFAULT_MODEL = "claude-sonnet-4-5-20250929"
# The Worker is the sandbox that keeps the agent in bounds: no permission prompts.
HEADLESS = ["exec", "-o", "stream-json", "--skip-permissions-unsafe"]
# Tools whose parameters name the file they change, and the parameter holding the path.
EDIT_TOOLS = {"Create": "file_path", "Edit": "file_path"}
SHELL_TOOL = "Execute"


class DroidAdapter(JsonLinesAdapter):
    name = "droid"

    def settings(self, request: AgentRequest) -> dict[str, Any]:
        model = request.model or DEFAULT_MODEL
        return {
            "customModels": [
                {
                    "model": model,
                    "id": f"custom:{model}",
                    "displayName": f"{model} (orchestrator gateway)",
                    # The Anthropic SDK droid uses adds /v1/messages itself.
                    "baseUrl": request.model_base_url.rstrip("/"),
                    "apiKey": KEY_PLACEHOLDER,
                    "provider": "anthropic",
                    "maxOutputTokens": 16384,
                }
            ]
        }

    def command(self, request: AgentRequest) -> AgentCommand:
        factory_dir = posixpath.join(request.home, ".factory")
        model = request.model or DEFAULT_MODEL
        argv = [
            self.executable,
            *HEADLESS,
            "-m",
            f"custom:{model}",
            "--cwd",
            request.workdir,
            "--",  # a prompt may start with a dash (droid's CLI is commander-based, like claude's)
            request.prompt,
        ]
        env = {"HOME": request.home, "FACTORY_AIRGAP_ENABLED": "true"}
        files = [
            AgentFile(
                path=posixpath.join(factory_dir, "settings.json"),
                content=json.dumps(self.settings(request), indent=2) + "\n",
            ),
            # User-level AGENTS.md, read like the project's: guidance outside the repository.
            AgentFile(
                path=posixpath.join(factory_dir, "AGENTS.md"), content=instructions_text(request)
            ),
        ]
        return AgentCommand(argv=argv, env=env, files=files, cwd=request.workdir)

    def events(self, obj: dict[str, Any]) -> list[AgentEvent]:
        kind = obj.get("type")
        if kind == "message" and obj.get("role") == "assistant" and obj.get("text"):
            return [AgentEvent(kind="message", text=str(obj["text"]))]
        if kind == "tool_call":
            return [_tool_event(obj)]
        if kind == "tool_result" and obj.get("isError"):
            text = base.shorten(str(obj.get("value")))
            return [AgentEvent(kind="error", text=text, data={"tool_call_id": obj.get("id")})]
        if kind == "error":
            return [AgentEvent(kind="error", text=str(obj.get("message")))]
        return []

    def fold(self, objs: list[dict[str, Any]], exit_code: int, workdir: str) -> AgentResult:
        files = [base.relative_path(p, workdir) for p in _changed_files(objs)]
        final = next((o for o in reversed(objs) if o.get("type") == "completion"), None)
        errors = [str(o.get("message")) for o in objs if o.get("type") == "error"]
        if final is None or exit_code != 0:
            why = "; ".join(errors) or "no completion line"
            summary = str(final.get("finalText") or "") if final else ""
            return AgentResult(
                status="failed",
                summary=summary,
                files_changed=files,
                raw_error=f"droid: {why} (exit {exit_code})",
            )
        usage: dict[str, Any] = final.get("usage") or {}
        tokens_in = sum(
            int(usage.get(key) or 0)
            for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        )
        return base.settled(
            summary=str(final.get("finalText") or ""),
            files_changed=files,
            tokens_in=tokens_in,
            tokens_out=int(usage.get("output_tokens") or 0),
        )


def _tool_event(obj: dict[str, Any]) -> AgentEvent:
    name, parameters = str(obj.get("toolName")), obj.get("parameters") or {}
    data = {"tool": name, "id": obj.get("id"), "input": parameters}
    if name in EDIT_TOOLS and parameters.get(EDIT_TOOLS[name]):
        return AgentEvent(kind="file_change", text=str(parameters[EDIT_TOOLS[name]]), data=data)
    if name == SHELL_TOOL and parameters.get("command"):
        return AgentEvent(kind="command", text=str(parameters["command"]), data=data)
    return AgentEvent(kind="tool", text=name, data=data)


def _changed_files(objs: Iterable[dict[str, Any]]) -> list[str]:
    """Paths of edit-tool calls whose result was not an error, in order."""
    calls: dict[str, str] = {}
    failed: set[str] = set()
    for obj in objs:
        if obj.get("type") == "tool_call":
            key = EDIT_TOOLS.get(str(obj.get("toolName")))
            path = (obj.get("parameters") or {}).get(key) if key else None
            if path:
                calls[str(obj.get("id"))] = str(path)
        elif obj.get("type") == "tool_result" and obj.get("isError"):
            failed.add(str(obj.get("id")))
    return base.unique(path for call_id, path in calls.items() if call_id not in failed)
