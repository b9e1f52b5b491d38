"""Activities of a chat's Product Owner session (workflows/po_session.py).

- ``prepare_session``: the session's workspace on the host (``<home>/po/<chat_id>``, mounted at
  /workspace in its Worker) with our instructions file in it (``AGENTS.md`` for Codex and droid,
  ``CLAUDE.md`` for Claude Code: the same text, deploy/po/AGENTS.md), and which agent answers.
- ``publish_to_chat``: a reply or a note onto the chat's stream ``telegram:chat:{chat_id}``,
  exactly once per delivery key however often the activity runs (the bot sends each entry).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.engineering import agent_for_keys, gateway_keys
from core.contracts.chat import ChatNote, ChatReply, delivery_key, encode_chat_entry
from core.ids import chat_stream
from core.paths import DEPLOY_DIR
from core.settings import Settings
from infra.agents import ADAPTERS

INSTRUCTIONS_FILE = DEPLOY_DIR / "po" / "AGENTS.md"
INSTRUCTION_NAMES = ("AGENTS.md", "CLAUDE.md")
# How long a delivery key is remembered: far longer than any retry of one publish.
PUBLISHED_TTL_S = 7 * 24 * 3600

NO_MODEL = (
    "I cannot work yet: no model is configured for the Product Owner. Set ANTHROPIC_API_KEY "
    "(Claude Code) or OPENAI_API_KEY (Codex) for the worker, or ORCHESTRATOR_PO_AGENT."
)

# KEYS[1] the delivery key, KEYS[2] the stream; ARGV: ttl, then field/value pairs. No length
# cap: housekeeping trims what the bot has acknowledged (infra/streams.py).
_PUBLISH_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  local fields = {}
  for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
  return redis.call('XADD', KEYS[2], '*', unpack(fields))
end
return false
"""


class PrepareSessionInput(BaseModel):
    chat_id: int
    agent: str | None = None


class SessionPlan(BaseModel):
    agent: str
    agent_options: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    workspace: str


class PublishToChatInput(BaseModel):
    chat_id: int
    reply: ChatReply | None = None
    note: ChatNote | None = None


class POActivities:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis

    def workspace(self, chat_id: int) -> Path:
        return self.settings.home_dir / "po" / str(chat_id)

    @activity.defn
    async def prepare_session(self, request: PrepareSessionInput) -> SessionPlan:
        """Make the workspace with the instructions, and choose the agent (idempotent)."""
        workspace = self.workspace(request.chat_id)
        workspace.mkdir(parents=True, exist_ok=True)
        text = INSTRUCTIONS_FILE.read_text()
        for name in INSTRUCTION_NAMES:
            path = workspace / name
            if not path.is_file() or path.read_text() != text:
                path.write_text(text)
        agent, options = self._agent(request.agent)
        return SessionPlan(
            agent=agent,
            agent_options=options,
            model=self.settings.po_model,
            workspace=str(workspace),
        )

    def _agent(self, wanted: str | None) -> tuple[str, dict[str, Any]]:
        settings = self.settings
        agent = wanted or settings.po_agent or settings.default_agent
        if agent is None:
            agent = agent_for_keys(gateway_keys())
        if agent is not None and agent not in ADAPTERS:
            raise ApplicationError(
                f"unknown PO agent {agent!r}; known: {sorted(ADAPTERS)}",
                type="BadSettings",
                non_retryable=True,
            )
        if agent is None:
            # Still an answer in the chat, saying what to configure.
            return "scripted", {"script": _saying(NO_MODEL)}
        if agent != "scripted":
            return agent, {}
        if settings.po_script is None:
            return agent, {"script": _saying(NO_MODEL)}
        try:
            script = json.loads(settings.po_script.read_text())
        except (OSError, ValueError) as exc:
            raise ApplicationError(
                f"cannot read ORCHESTRATOR_PO_SCRIPT {settings.po_script}: {exc}",
                type="BadSettings",
                non_retryable=True,
            ) from None
        return agent, {"script": script}

    @activity.defn
    async def publish_to_chat(self, request: PublishToChatInput) -> bool:
        """XADD the reply or note to the chat's stream once; False when it was there already."""
        entry = request.reply or request.note
        if entry is None:
            raise ApplicationError("nothing to publish", type="BadInput", non_retryable=True)
        key = f"telegram:published:{request.chat_id}:{delivery_key(entry)}"
        args: list[str | int] = [PUBLISHED_TTL_S]
        for name, value in encode_chat_entry(entry).items():
            args += [name, value]
        added = await self.redis.eval(  # type: ignore[misc]
            _PUBLISH_ONCE, 2, key, chat_stream(request.chat_id), *args
        )
        return added is not None


def _saying(text: str) -> dict[str, Any]:
    return {"rounds": [{"report": "completed", "summary": text}]}
