"""Claude Code (``@anthropic-ai/claude-code``) run headless.

``claude -p --output-format stream-json --verbose --dangerously-skip-permissions -- PROMPT`` prints
one JSON object a line (captured from the real CLI 2.1.x:
tests/infra/agents/fixtures/claude_*.jsonl):

- ``{"type": "system", "subtype": "init", "cwd", "model", "tools", ...}``
- ``{"type": "assistant", "message": {"content": [text | tool_use{id, name, input}], ...}}`` (an
  API failure comes as an assistant line with ``is_api_error_message: true``)
- ``{"type": "user", "message": {"content": [tool_result{tool_use_id, is_error?}]}, ...}``
- ``{"type": "result", "subtype", "is_error", "result", "total_cost_usd", "usage": {input_tokens,
  output_tokens, cache_creation_input_tokens, cache_read_input_tokens}, "num_turns", ...}``
"""

from __future__ import annotations

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
    relative_path,
    settled,
    shorten,
    unique,
)

# One JSON object a line, no questions: the Worker is the sandbox that keeps it in bounds.
HEADLESS = ["-p", "--output-format", "stream-json", "--verbose", "--dangerously-skip-permissions"]
# Tools whose input names the file they change, and the input key holding the path.
EDIT_TOOLS = {
    "Write": "file_path",
    "Edit": "file_path",
    "MultiEdit": "file_path",
    "NotebookEdit": "notebook_path",
}


class ClaudeAdapter(JsonLinesAdapter):
    name = "claude"
    project_instruction_files = ("CLAUDE.md",)

    def command(self, request: AgentRequest) -> AgentCommand:
        config_dir = posixpath.join(request.home, ".claude")
        argv = [self.executable, *HEADLESS]
        if request.model:
            argv += ["--model", request.model]
        argv += ["--", request.prompt]  # a prompt may start with a dash
        env = {
            "ANTHROPIC_BASE_URL": request.model_base_url,
            "ANTHROPIC_API_KEY": KEY_PLACEHOLDER,
            "HOME": request.home,
            "CLAUDE_CONFIG_DIR": config_dir,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            # The Worker is a sandbox; as root claude refuses to skip permissions without it.
            "IS_SANDBOX": "1",
        }
        # The user-level memory file: guidance reaches the agent without touching the repository.
        files = [
            AgentFile(
                path=posixpath.join(config_dir, "CLAUDE.md"), content=instructions_text(request)
            )
        ]
        return AgentCommand(argv=argv, env=env, files=files, cwd=request.workdir)

    def events(self, obj: dict[str, Any]) -> list[AgentEvent]:
        kind = obj.get("type")
        if kind == "assistant":
            return _assistant_events(obj)
        if kind == "user":
            return _tool_errors(obj)
        if kind == "result" and (obj.get("is_error") or obj.get("subtype") != "success"):
            return [AgentEvent(kind="error", text=str(obj.get("result") or obj.get("subtype")))]
        return []

    def fold(self, objs: list[dict[str, Any]], exit_code: int, workdir: str) -> AgentResult:
        files = [relative_path(p, workdir) for p in _changed_files(objs)]
        final = next((o for o in reversed(objs) if o.get("type") == "result"), None)
        if final is None:
            return AgentResult(
                status="failed",
                files_changed=files,
                raw_error=f"claude exited with {exit_code} without a result line",
            )
        usage: dict[str, Any] = final.get("usage") or {}
        tokens_in = sum(
            int(usage.get(key) or 0)
            for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        )
        summary = str(final.get("result") or "")
        common: dict[str, Any] = {
            "summary": summary,
            "files_changed": files,
            "tokens_in": tokens_in,
            "tokens_out": int(usage.get("output_tokens") or 0),
            "cost_usd": final.get("total_cost_usd"),
        }
        if final.get("is_error") or final.get("subtype") != "success" or exit_code != 0:
            error = summary or str(final.get("subtype"))
            return AgentResult(status="failed", raw_error=f"{error} (exit {exit_code})", **common)
        return settled(**common)


def _assistant_events(obj: dict[str, Any]) -> list[AgentEvent]:
    events = []
    for block in (obj.get("message") or {}).get("content") or []:
        if block.get("type") == "text" and block.get("text"):
            kind = "error" if obj.get("is_api_error_message") else "message"
            events.append(AgentEvent(kind=kind, text=block["text"]))
        elif block.get("type") == "tool_use":
            events.append(_tool_event(block))
    return events


def _tool_event(block: dict[str, Any]) -> AgentEvent:
    name, tool_input = str(block.get("name")), block.get("input") or {}
    data = {"tool": name, "id": block.get("id"), "input": tool_input}
    if name in EDIT_TOOLS and tool_input.get(EDIT_TOOLS[name]):
        return AgentEvent(kind="file_change", text=str(tool_input[EDIT_TOOLS[name]]), data=data)
    if name == "Bash" and tool_input.get("command"):
        return AgentEvent(kind="command", text=str(tool_input["command"]), data=data)
    return AgentEvent(kind="tool", text=name, data=data)


def _tool_errors(obj: dict[str, Any]) -> list[AgentEvent]:
    content = (obj.get("message") or {}).get("content")
    if not isinstance(content, list):
        return []
    return [
        AgentEvent(
            kind="error",
            text=shorten(str(block.get("content"))),
            data={"tool_use_id": block.get("tool_use_id")},
        )
        for block in content
        if isinstance(block, dict) and block.get("type") == "tool_result" and block.get("is_error")
    ]


def _changed_files(objs: list[dict[str, Any]]) -> list[str]:
    """Paths of edit-tool calls whose result was not an error, in order."""
    calls: dict[str, str] = {}
    failed: set[str] = set()
    for obj in objs:
        content = (obj.get("message") or {}).get("content")
        if not isinstance(content, list):
            continue
        for block in content:
            if not isinstance(block, dict):
                continue
            if obj.get("type") == "assistant" and block.get("type") == "tool_use":
                key = EDIT_TOOLS.get(str(block.get("name")))
                path = (block.get("input") or {}).get(key) if key else None
                if path:
                    calls[str(block.get("id"))] = str(path)
            elif block.get("type") == "tool_result" and block.get("is_error"):
                failed.add(str(block.get("tool_use_id")))
    return unique(path for call_id, path in calls.items() if call_id not in failed)
