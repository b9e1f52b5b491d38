"""Coding-agent adapters behind one interface (see base.py): claude, codex, droid, scripted."""

from __future__ import annotations

from typing import Any

from core.contracts.agents import AgentEvent, AgentResult
from infra.agents.base import KEY_PLACEHOLDER, AgentAdapter, AgentCommand, AgentFile, AgentRequest
from infra.agents.claude import ClaudeAdapter
from infra.agents.codex import CodexAdapter
from infra.agents.droid import DroidAdapter
from infra.agents.scripted import ScriptedAdapter

ADAPTERS: dict[str, type[AgentAdapter]] = {
    "claude": ClaudeAdapter,
    "codex": CodexAdapter,
    "droid": DroidAdapter,
    "scripted": ScriptedAdapter,
}


def get_adapter(name: str, **options: Any) -> AgentAdapter:
    """The adapter called ``name``; ``options`` go to its constructor (e.g. a scripted script)."""
    try:
        return ADAPTERS[name](**options)
    except KeyError:
        raise ValueError(f"unknown agent {name!r}; known: {', '.join(sorted(ADAPTERS))}") from None


__all__ = [
    "ADAPTERS",
    "KEY_PLACEHOLDER",
    "AgentAdapter",
    "AgentCommand",
    "AgentEvent",
    "AgentFile",
    "AgentRequest",
    "AgentResult",
    "ClaudeAdapter",
    "CodexAdapter",
    "DroidAdapter",
    "ScriptedAdapter",
    "get_adapter",
]
