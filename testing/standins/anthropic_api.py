"""A local stand-in of the Anthropic Messages API that answers Claude Code with scripted tool calls.

Protocol as the real ``claude`` CLI uses it (tried here): ``HEAD /`` first, then
one ``POST /v1/messages?beta=true`` per turn with ``stream: true`` (server-sent events
message_start / content_block_start / content_block_delta / content_block_stop / message_delta /
message_stop). Factory's ``droid`` with an ``anthropic`` custom model (tried here) sends the same
``POST /v1/messages`` (no query), streamed. Turn k (k = tool results seen so far) answers with a
``tool_use`` of the shell tool the request offers (Claude Code's ``Bash``, droid's ``Execute``)
for the script's k-th command, then of its file-writing tool (``Write``, droid's ``Create``; both
take ``file_path`` and ``content``) for each of its files (absolute path under the working
directory the prompts name); once every call has its tool result, the reply is the script's final
text. Requests without tools (side calls such as titles) get a short text answer.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from testing.standins.recording import ModelScript, Recorder, sse, strings

# "Working directory: X" in older claude prompts, "Primary working directory: X" in 2.1.3xx;
# droid shows the output of a `pwd` it ran at start ("% pwd", then the directory on its own line).
_CWD = re.compile(r"working directory: (\S+)|^% pwd\n(/\S*)", re.IGNORECASE | re.MULTILINE)
# The tools that write a whole file, by CLI (claude, droid): the same input (file_path, content).
_WRITE_TOOLS = ("Write", "Create")
# The tools that run a shell command, by CLI (claude, droid): both take ``command``.
_SHELL_TOOLS = ("Bash", "Execute")


class AnthropicStandIn:
    def __init__(self, script: ModelScript | None = None) -> None:
        self.script = script or ModelScript()
        self.recorder = Recorder()
        self._ids = itertools.count(1)
        self.app = Starlette(
            routes=[
                Route("/", self._root, methods=["GET", "HEAD"]),
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/{path:path}", self._other, methods=["GET", "POST", "HEAD"]),
            ]
        )

    @property
    def requests(self) -> list[Any]:
        return self.recorder.requests

    def message_requests(self) -> list[Any]:
        return [r for r in self.requests if r.path == "/v1/messages"]

    async def _root(self, request: Request) -> Response:
        await self.recorder.record(request)
        return Response(status_code=200)

    async def _other(self, request: Request) -> Response:
        await self.recorder.record(request)
        return JSONResponse(
            {"type": "error", "error": {"type": "not_found_error", "message": "stand-in"}},
            status_code=404,
        )

    async def _messages(self, request: Request) -> Response:
        recorded = await self.recorder.record(request)
        body: dict[str, Any] = recorded.body if isinstance(recorded.body, dict) else {}
        if self.script.error:
            status, text = self.script.error
            error = {"type": "invalid_request_error", "message": text}
            return JSONResponse({"type": "error", "error": error}, status_code=status)
        try:
            content = self._reply_content(body)
        except ValueError as exc:  # tell the CLI (and the test's output) what the stand-in missed
            error = {"type": "invalid_request_error", "message": str(exc)}
            return JSONResponse({"type": "error", "error": error}, status_code=400)
        message = {
            "id": f"msg_standin_{next(self._ids)}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "claude-standin"),
            "content": content,
            "stop_reason": "tool_use" if content[0]["type"] == "tool_use" else "end_turn",
            "stop_sequence": None,
            "usage": self._usage(self.script.output_tokens),
        }
        if not body.get("stream"):
            return JSONResponse(message)
        return StreamingResponse(self._events(message), media_type="text/event-stream")

    def _reply_content(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        if not body.get("tools"):
            return [{"type": "text", "text": "Stand-in"}]
        done = sum(
            1
            for message in body.get("messages", [])
            if isinstance(message.get("content"), list)
            for block in message["content"]
            if isinstance(block, dict) and block.get("type") == "tool_result"
        )
        commands = self.script.commands
        if done >= len(commands) + len(self.script.writes):
            return [{"type": "text", "text": self.script.final_text}]
        if done < len(commands):
            shell = _offered(body, _SHELL_TOOLS)
            # droid's Execute also requires a short sentence-cased summary of the command.
            extra = {"summary": "Run the scripted command"} if shell == "Execute" else {}
            return [self._tool_use(shell, {"command": commands[done], **extra})]
        cwd = _working_directory(body)
        write = self.script.writes[done - len(commands)]
        path = f"{cwd.rstrip('/')}/{write.path}"
        tool = _offered(body, _WRITE_TOOLS)
        return [self._tool_use(tool, {"file_path": path, "content": write.content})]

    def _tool_use(self, name: str, tool_input: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "tool_use",
            "id": f"toolu_standin_{next(self._ids)}",
            "name": name,
            "input": tool_input,
        }

    def _usage(self, output_tokens: int) -> dict[str, int]:
        return {
            "input_tokens": self.script.input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }

    async def _events(self, message: dict[str, Any]) -> AsyncIterator[str]:
        start = {**message, "content": [], "stop_reason": None, "usage": self._usage(0)}
        yield sse("message_start", {"type": "message_start", "message": start})
        for index, block in enumerate(message["content"]):
            if block["type"] == "tool_use":
                opening = {**block, "input": {}}
                delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
            else:
                opening = {"type": "text", "text": ""}
                delta = {"type": "text_delta", "text": block["text"]}
            yield sse(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opening},
            )
            yield sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
            yield sse("content_block_stop", {"type": "content_block_stop", "index": index})
        yield sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": self.script.output_tokens},
            },
        )
        yield sse("message_stop", {"type": "message_stop"})


def _working_directory(body: dict[str, Any]) -> str:
    for text in strings([body.get("system"), body.get("messages")]):
        found = _CWD.search(text)
        if found:
            return found.group(1) or found.group(2)
    raise ValueError("no working directory ('Working directory:' or '% pwd') in the prompts")


def _offered(body: dict[str, Any], choices: tuple[str, ...]) -> str:
    """The first of ``choices`` among the request's tools."""
    offered = {tool.get("name") for tool in body.get("tools", []) if isinstance(tool, dict)}
    for name in choices:
        if name in offered:
            return name
    raise ValueError(f"none of the tools {', '.join(choices)} among the request's tools")
