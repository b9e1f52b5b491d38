"""OpenAI Codex (``@openai/codex``) run headless.

``OPENAI_BASE_URL`` is ignored by codex 0.169: the model endpoint comes from a provider in
``$CODEX_HOME/config.toml`` (``base_url``, ``env_key``, ``wire_api = "responses"``).
``codex exec --json`` prints one JSON object a line (captured from the real CLI 0.169:
tests/infra/agents/fixtures/codex_*.jsonl):

- ``{"type": "thread.started", "thread_id"}``, ``{"type": "turn.started"}``
- ``{"type": "item.started" | "item.updated" | "item.completed", "item": {"id", "type", ...}}``
  with item types ``agent_message{text}``, ``reasoning{text}``, ``command_execution{command,
  aggregated_output, exit_code, status}``, ``file_change{changes[{path, kind}], status}``,
  ``mcp_tool_call``, ``web_search``, ``todo_list``, ``error{message}``
- ``{"type": "turn.completed", "usage": {input_tokens, cached_input_tokens, output_tokens,
  reasoning_output_tokens}}`` or ``{"type": "turn.failed", "error": {"message"}}``
- ``{"type": "error", "message"}`` for a fatal stream error

Codex reports no cost: ``cost_usd`` stays None (the gateway prices the tokens).
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from core.contracts.agents import AgentEvent, AgentResult
from infra.agents.base import (
    KEY_PLACEHOLDER,
    AgentCommand,
    AgentFile,
    AgentRequest,
    JsonLinesAdapter,
    instructions_text,
    json_line,
    relative_path,
    settled,
    shorten,
    unique,
)

DEFAULT_MODEL = "gpt-5.5"
# One JSON object a line, anywhere, no sandbox of its own: the Worker is the sandbox.
HEADLESS = ["exec", "--json", "--skip-git-repo-check", "--sandbox", "danger-full-access"]
# Nothing phoned home, no plugin fetched: a Worker has no network.
QUIET = ["-c", "analytics.enabled=false", "-c", "features.plugins=false"]
PROVIDER = "orchestrator"
KEY_ENV = "OPENAI_API_KEY"


def config_toml(base_url: str) -> str:
    # json.dumps gives a valid TOML basic string for any URL.
    return (
        f'model_provider = "{PROVIDER}"\n'
        "\n"
        f"[model_providers.{PROVIDER}]\n"
        'name = "orchestrator model gateway"\n'
        f"base_url = {json.dumps(base_url.rstrip('/') + '/v1')}\n"
        f'env_key = "{KEY_ENV}"\n'
        'wire_api = "responses"\n'
    )


class CodexAdapter(JsonLinesAdapter):
    name = "codex"

    def command(self, request: AgentRequest) -> AgentCommand:
        codex_home = posixpath.join(request.home, ".codex")
        model = request.model or DEFAULT_MODEL
        # "--": a prompt may start with a dash.
        argv = [self.executable, *HEADLESS, "-m", model, *QUIET, "--", request.prompt]
        env = {"CODEX_HOME": codex_home, "HOME": request.home, KEY_ENV: KEY_PLACEHOLDER}
        files = [
            AgentFile(
                path=posixpath.join(codex_home, "config.toml"),
                content=config_toml(request.model_base_url),
            ),
            # The global AGENTS.md: guidance without touching the repository.
            AgentFile(
                path=posixpath.join(codex_home, "AGENTS.md"), content=instructions_text(request)
            ),
        ]
        return AgentCommand(argv=argv, env=env, files=files, cwd=request.workdir)

    def events(self, obj: dict[str, Any]) -> list[AgentEvent]:
        kind = obj.get("type")
        if kind in ("turn.failed", "error"):
            return [AgentEvent(kind="error", text=_error_message(obj))]
        item = obj.get("item") or {}
        if kind == "item.started" and item.get("type") == "command_execution":
            return [
                AgentEvent(
                    kind="command", text=str(item.get("command")), data={"status": "started"}
                )
            ]
        if kind == "item.completed":
            return _item_events(item)
        return []

    def fold(self, objs: list[dict[str, Any]], exit_code: int, workdir: str) -> AgentResult:
        items = [o.get("item") or {} for o in objs if o.get("type") == "item.completed"]
        usages = [o.get("usage") or {} for o in objs if o.get("type") == "turn.completed"]
        messages = [str(i.get("text") or "") for i in items if i.get("type") == "agent_message"]
        common: dict[str, Any] = {
            "summary": messages[-1] if messages else "",
            "files_changed": [relative_path(p, workdir) for p in _changed_files(items)],
            "tokens_in": sum(int(u.get("input_tokens") or 0) for u in usages),
            "tokens_out": sum(int(u.get("output_tokens") or 0) for u in usages),
        }
        errors = [_error_message(o) for o in objs if o.get("type") in ("turn.failed", "error")]
        if errors or exit_code != 0 or not usages:
            error = (
                errors[-1] if errors else f"codex exited with {exit_code} without a finished turn"
            )
            return AgentResult(status="failed", raw_error=error, **common)
        return settled(**common)


def _error_message(obj: dict[str, Any]) -> str:
    error = obj.get("error")
    message = str(error.get("message") or error) if isinstance(error, dict) else None
    message = message or str(obj.get("message") or error or obj)
    # Codex passes an API error's body through as the message: keep the API's own words.
    inner = json_line(message)
    if inner and isinstance(inner.get("error"), dict) and inner["error"].get("message"):
        return str(inner["error"]["message"])
    return message


def _item_events(item: dict[str, Any]) -> list[AgentEvent]:
    kind = item.get("type")
    if kind == "agent_message":
        return [AgentEvent(kind="message", text=str(item.get("text") or ""))]
    if kind == "command_execution":
        data = {
            "exit_code": item.get("exit_code"),
            "output": shorten(str(item.get("aggregated_output") or "")),
        }
        return [AgentEvent(kind="command", text=str(item.get("command")), data=data)]
    if kind == "file_change":
        return [
            AgentEvent(
                kind="file_change",
                text=str(c.get("path")),
                data={"kind": c.get("kind"), "status": item.get("status")},
            )
            for c in item.get("changes") or []
        ]
    if kind == "error":
        return [AgentEvent(kind="error", text=str(item.get("message")))]
    if kind in ("mcp_tool_call", "web_search", "todo_list"):
        return [AgentEvent(kind="tool", text=str(kind), data=item)]
    return []


def _changed_files(items: list[dict[str, Any]]) -> list[str]:
    return unique(
        str(change.get("path"))
        for item in items
        if item.get("type") == "file_change" and item.get("status") == "completed"
        for change in item.get("changes") or []
        if change.get("path")
    )
