"""One interface over the coding-agent CLIs run headless inside a Worker.

An adapter turns an :class:`AgentRequest` into an :class:`AgentCommand` (argv, environment and
files to write into the Worker first), parses the CLI's stdout line by line into
:class:`AgentEvent` s for live progress, and folds the whole output into one :class:`AgentResult`.
Adapters never run anything themselves: the Worker activity runs the command in the container.

No secret enters a command: the model base URL points at the Worker's loopback forwarder to the
model gateway, which adds the real credential; the CLI's key variable holds :data:`KEY_PLACEHOLDER`.

Blocked agents: the instructions every adapter hands its CLI ask the agent to end its final
message with a line ``BLOCKED: <question>`` when it cannot go on without a person's answer;
:func:`blocked_question` finds that line.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from core.contracts.agents import AgentEvent, AgentResult

DEFAULT_WORKDIR = "/workspace"
# Where the CLI keeps its own configuration and state inside the Worker (not the repository).
DEFAULT_HOME = "/tmp/agent-home"
# Sent as the API key: the gateway replaces it with the real credential on the host.
KEY_PLACEHOLDER = "orchestrator-gateway-adds-the-key"
BLOCKED_MARKER = "BLOCKED:"
# The repository's instructions for any coding agent (the agents.md convention).
PROJECT_INSTRUCTIONS = "AGENTS.md"
# More than any useful instructions file: a bigger one is cut, never read whole into a prompt.
MAX_INSTRUCTIONS_BYTES = 64 * 1024

BLOCKED_INSTRUCTIONS = (
    "You run unattended: nobody answers questions during the run. Work in the current directory. "
    "If you cannot finish without a decision from a person, stop and end your final message "
    f"with one line `{BLOCKED_MARKER} <your question>`."
)


class AgentRequest(BaseModel):
    prompt: str
    model_base_url: str  # e.g. http://127.0.0.1:<port>: the forwarder, never the upstream API
    workdir: str = DEFAULT_WORKDIR
    model: str | None = None  # None: the adapter's default
    instructions: str | None = None  # project-level guidance, added to the blocked convention
    home: str = DEFAULT_HOME


class AgentFile(BaseModel):
    path: str  # absolute path inside the Worker
    content: str
    mode: int = 0o644


class AgentCommand(BaseModel):
    """What the Worker runs: ``argv`` in ``cwd`` with ``env`` added to the container's environment
    (PATH and the rest come from the image), stdin closed, after writing ``files``."""

    argv: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    files: list[AgentFile] = Field(default_factory=list)
    cwd: str = DEFAULT_WORKDIR


class AgentAdapter(ABC):
    name: str
    # The repository instruction files the CLI reads by itself from its working directory.
    project_instruction_files: tuple[str, ...] = (PROJECT_INSTRUCTIONS,)

    def __init__(self, executable: str | None = None) -> None:
        # The CLI's command; by default the one its package installs, named like the adapter.
        self.executable = executable or self.name

    @abstractmethod
    def command(self, request: AgentRequest) -> AgentCommand: ...

    @abstractmethod
    def parse_line(self, line: str) -> list[AgentEvent]: ...

    @abstractmethod
    def result(
        self, lines: Iterable[str], exit_code: int, workdir: str = DEFAULT_WORKDIR
    ) -> AgentResult: ...


class JsonLinesAdapter(AgentAdapter):
    """A CLI that prints one JSON object a line (claude, codex, droid, the scripted agent): lines
    that are no JSON object (a CLI's stray text) are skipped."""

    def parse_line(self, line: str) -> list[AgentEvent]:
        obj = json_line(line)
        return self.events(obj) if obj is not None else []

    def result(
        self, lines: Iterable[str], exit_code: int, workdir: str = DEFAULT_WORKDIR
    ) -> AgentResult:
        return self.fold(json_lines(lines), exit_code, workdir)

    @abstractmethod
    def events(self, obj: dict[str, Any]) -> list[AgentEvent]:
        """The live events of one output object."""

    @abstractmethod
    def fold(self, objs: list[dict[str, Any]], exit_code: int, workdir: str) -> AgentResult:
        """The whole output, folded into the turn's result."""


def settled(**fields: Any) -> AgentResult:
    """The result of a turn that did not fail: blocked when its final message ends asking a
    person (``BLOCKED: <question>``), else completed."""
    question = blocked_question(str(fields.get("summary") or ""))
    if question:
        return AgentResult(status="blocked", question=question, **fields)
    return AgentResult(status="completed", **fields)


def instructions_text(request: AgentRequest) -> str:
    parts = [BLOCKED_INSTRUCTIONS]
    if request.instructions:
        parts.append(request.instructions.strip())
    return "\n\n".join(parts) + "\n"


def project_instructions(workspace: Path, adapter: type[AgentAdapter]) -> str | None:
    """The project's ``AGENTS.md`` for a CLI that would not read it by itself, else None.

    Claude Code reads ``CLAUDE.md`` only: a project with an ``AGENTS.md`` and no ``CLAUDE.md``
    has it joined to the instructions the adapter writes. A CLI that finds one of its own files
    in the repository gets nothing more (it would read the same text twice).
    """
    own_files = adapter.project_instruction_files
    if any(_read_regular(workspace / name) is not None for name in own_files):
        return None
    text = _read_regular(workspace / PROJECT_INSTRUCTIONS)
    if text is None or not text.strip():
        return None
    return text.strip()


def _read_regular(path: Path) -> str | None:
    """A regular file's text (at most :data:`MAX_INSTRUCTIONS_BYTES`), or None. The workspace is
    the agent's: a symbolic link there must not make the host read a file outside it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, MAX_INSTRUCTIONS_BYTES).decode("utf-8", errors="replace")
    finally:
        os.close(fd)


def json_lines(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The JSON objects among ``lines``; anything else (a CLI's stray text) is skipped."""
    found = []
    for line in lines:
        obj = json_line(line)
        if obj is not None:
            found.append(obj)
    return found


def json_line(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def blocked_question(text: str) -> str | None:
    """The question of the last ``BLOCKED: ...`` line of an agent's final message, if any."""
    for line in reversed(text.strip().splitlines()):
        stripped = line.strip().strip("*`_ ")
        if stripped.upper().startswith(BLOCKED_MARKER):
            question = stripped[len(BLOCKED_MARKER) :].strip()
            return question or "The agent is blocked and asked no question."
    return None


def relative_path(path: str, workdir: str) -> str:
    """``path`` relative to ``workdir`` when inside it (agents report absolute paths)."""
    if not posixpath.isabs(path):
        return posixpath.normpath(path)
    normal, root = posixpath.normpath(path), posixpath.normpath(workdir)
    if normal == root or not normal.startswith(root.rstrip("/") + "/"):
        return normal
    return posixpath.relpath(normal, root)


def unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def shorten(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
