"""Factory's ``droid`` run headless: ``droid exec -o json``.

FORMAT SOURCE: Factory's documentation only, "Droid Exec (Headless CLI)", section "Output formats
and artifacts" (https://docs.factory.ai/cli/droid-exec/overview), and "Bring Your Own Key"
(https://docs.factory.ai/cli/byok/overview) for the custom model settings. ``droid`` is not on a
package registry, so this adapter has NOT been run against the real binary here; its parser is
tested on the documented sample (tests/infra/agents/fixtures/droid_documented.json). The documented
``-o json`` output is ONE JSON object, possibly pretty-printed over several lines::

    {"type": "result", "subtype": "success", "is_error": false, "duration_ms": 5657,
     "num_turns": 1, "result": "<final message>", "session_id": "<uuid>"}

It names no files and no token counts: ``files_changed`` stays empty (the workflow reads the
changes from git) and the tokens come from the model gateway's count. Exit code 0 is success,
anything else a failure (documented under "Exit behavior").

Model endpoint: a BYOK custom model in ``~/.factory/settings.json`` (``customModels`` with
``baseUrl``, ``apiKey``, ``provider`` = ``anthropic`` (Messages API) or ``openai`` (Responses
API)) pointing at the Worker's forwarder, selected with ``-m custom:<model>``. Whether ``droid``
also insists on a Factory login (``FACTORY_API_KEY``) with only custom models is not documented;
no such key is passed (none may enter a Worker).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable
from typing import Any, Literal

from core.contracts.agents import AgentEvent, AgentResult
from infra.agents.base import (
    DEFAULT_WORKDIR,
    KEY_PLACEHOLDER,
    AgentAdapter,
    AgentCommand,
    AgentFile,
    AgentRequest,
    instructions_text,
    json_line,
    settled,
)

DEFAULT_MODELS = {"anthropic": "claude-sonnet-4-5-20250929", "openai": "gpt-5-codex"}


class DroidAdapter(AgentAdapter):
    name = "droid"

    def __init__(
        self, executable: str = "droid", provider: Literal["anthropic", "openai"] = "anthropic"
    ) -> None:
        self.executable = executable
        self.provider = provider

    def settings(self, request: AgentRequest) -> dict[str, Any]:
        base = request.model_base_url.rstrip("/")
        model = request.model or DEFAULT_MODELS[self.provider]
        return {
            "customModels": [
                {
                    "model": model,
                    "id": f"custom:{model}",
                    "displayName": f"{model} (orchestrator gateway)",
                    # The Anthropic SDK adds /v1 itself; the OpenAI one expects it in the base.
                    "baseUrl": base if self.provider == "anthropic" else f"{base}/v1",
                    "apiKey": KEY_PLACEHOLDER,
                    "provider": self.provider,
                    "maxOutputTokens": 16384,
                }
            ]
        }

    def command(self, request: AgentRequest) -> AgentCommand:
        factory_dir = posixpath.join(request.home, ".factory")
        model = request.model or DEFAULT_MODELS[self.provider]
        argv = [
            self.executable,
            "exec",
            "-o",
            "json",
            # The Worker is the isolated environment this mode is documented for.
            "--skip-permissions-unsafe",
            "-m",
            f"custom:{model}",
            "--cwd",
            request.workdir,
            "--",  # a prompt may start with a dash (droid's CLI is commander-based, like claude's)
            request.prompt,
        ]
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
        return AgentCommand(argv=argv, env={"HOME": request.home}, files=files, cwd=request.workdir)

    def parse_line(self, line: str) -> list[AgentEvent]:
        # `-o json` prints one object at the end: there is no live progress to parse, except a
        # single-line result that already says it failed.
        obj = json_line(line)
        if obj and obj.get("type") == "result" and obj.get("is_error"):
            return [AgentEvent(kind="error", text=str(obj.get("result")))]
        return []

    def result(
        self, lines: Iterable[str], exit_code: int, workdir: str = DEFAULT_WORKDIR
    ) -> AgentResult:
        final = _result_object("\n".join(lines))
        if final is None:
            return AgentResult(
                status="failed", raw_error=f"droid exited with {exit_code} without a JSON result"
            )
        summary = str(final.get("result") or "")
        if final.get("is_error") or final.get("subtype") != "success" or exit_code != 0:
            error = summary or str(final.get("subtype"))
            return AgentResult(
                status="failed", summary=summary, raw_error=f"{error} (exit {exit_code})"
            )
        return settled(summary=summary)


def _result_object(text: str) -> dict[str, Any] | None:
    """The last ``{"type": "result", ...}`` object in ``text``, one line or pretty-printed."""
    decoder = json.JSONDecoder()
    found = None
    for index, char in enumerate(text):
        if char != "{" or (index and text[index - 1] != "\n"):
            continue  # objects start a line
        try:
            obj, _ = decoder.raw_decode(text, index)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("type") == "result":
            found = obj
    return found
