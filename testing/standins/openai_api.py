"""A local stand-in of the OpenAI Responses API that answers Codex with scripted tool calls.

Protocol as the real ``codex`` CLI uses it (tried here): one ``POST
/v1/responses`` per model turn with ``stream: true``; the reply is server-sent events
response.created / response.output_item.added / response.output_item.done / response.completed
(the last carries ``usage``). Turn k (k = tool outputs seen so far in ``input``) creates the
script's k-th file, either with the freeform ``apply_patch`` tool (a ``custom_tool_call`` holding
an ``*** Add File`` patch, paths relative to the agent's cwd) or with the shell tool (a
``function_call``); once every write has its output, the reply is an assistant message with the
script's final text.
"""

from __future__ import annotations

import itertools
import json
import shlex
from collections.abc import AsyncIterator
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from testing.standins.recording import FileWrite, ModelScript, Recorder, sse

_TOOL_OUTPUTS = {"custom_tool_call_output", "function_call_output", "local_shell_call_output"}


class OpenAIStandIn:
    def __init__(
        self,
        script: ModelScript | None = None,
        edit_with: Literal["apply_patch", "shell"] = "apply_patch",
    ) -> None:
        self.script = script or ModelScript()
        self.edit_with = edit_with
        self.recorder = Recorder()
        self._ids = itertools.count(1)
        self.app = Starlette(
            routes=[
                Route("/v1/responses", self._responses, methods=["POST"]),
                Route("/{path:path}", self._other, methods=["GET", "POST", "HEAD"]),
            ]
        )

    @property
    def requests(self) -> list[Any]:
        return self.recorder.requests

    def response_requests(self) -> list[Any]:
        return [r for r in self.requests if r.path == "/v1/responses"]

    async def _other(self, request: Request) -> Response:
        await self.recorder.record(request)
        return JSONResponse({"error": {"message": "not in the stand-in", "type": "not_found"}}, 404)

    async def _responses(self, request: Request) -> Response:
        recorded = await self.recorder.record(request)
        body: dict[str, Any] = recorded.body if isinstance(recorded.body, dict) else {}
        if self.script.error:
            status, text = self.script.error
            error = {"message": text, "type": "invalid_request_error", "code": None}
            return JSONResponse({"error": error}, status_code=status)
        try:
            item = self._reply_item(body)
        except ValueError as exc:
            return JSONResponse({"error": {"message": str(exc), "type": "invalid_request"}}, 400)
        response = {
            "id": f"resp_standin_{next(self._ids)}",
            "object": "response",
            "created_at": 0,
            "model": body.get("model", "gpt-standin"),
            "status": "completed",
            "output": [item],
            "usage": {
                "input_tokens": self.script.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.script.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.script.input_tokens + self.script.output_tokens,
            },
        }
        if not body.get("stream"):
            return JSONResponse(response)
        return StreamingResponse(self._events(response), media_type="text/event-stream")

    def _reply_item(self, body: dict[str, Any]) -> dict[str, Any]:
        items = body.get("input") or []
        done = sum(1 for i in items if isinstance(i, dict) and i.get("type") in _TOOL_OUTPUTS)
        if done >= len(self.script.writes):
            return {
                "type": "message",
                "id": f"msg_standin_{next(self._ids)}",
                "role": "assistant",
                "status": "completed",
                "content": [
                    {"type": "output_text", "text": self.script.final_text, "annotations": []}
                ],
            }
        write = self.script.writes[done]
        call_id = f"call_standin_{next(self._ids)}"
        if self.edit_with == "apply_patch":
            return {
                "type": "custom_tool_call",
                "id": f"ctc_standin_{next(self._ids)}",
                "status": "completed",
                "call_id": call_id,
                "name": "apply_patch",
                "input": add_file_patch(write),
            }
        name, arguments = _shell_call(body, write)
        return {
            "type": "function_call",
            "id": f"fc_standin_{next(self._ids)}",
            "status": "completed",
            "call_id": call_id,
            "name": name,
            "arguments": json.dumps(arguments),
        }

    async def _events(self, response: dict[str, Any]) -> AsyncIterator[str]:
        sequence = itertools.count()
        opening = {**response, "status": "in_progress", "output": [], "usage": None}
        yield sse(
            "response.created",
            {"type": "response.created", "sequence_number": next(sequence), "response": opening},
        )
        for index, item in enumerate(response["output"]):
            for kind in ("response.output_item.added", "response.output_item.done"):
                event = {"type": kind, "sequence_number": next(sequence), "output_index": index}
                yield sse(kind, {**event, "item": item})
        yield sse(
            "response.completed",
            {"type": "response.completed", "sequence_number": next(sequence), "response": response},
        )


def add_file_patch(write: FileWrite) -> str:
    """An apply_patch ``*** Add File`` hunk; every content line gets a ``+`` (the tool ends the
    file with a newline)."""
    lines = [f"+{line}" for line in write.content.splitlines()]
    return "\n".join(["*** Begin Patch", f"*** Add File: {write.path}", *lines, "*** End Patch"])


def _shell_call(body: dict[str, Any], write: FileWrite) -> tuple[str, dict[str, Any]]:
    """A call of whichever shell tool the request offers that writes the file with printf."""
    names = {tool.get("name") for tool in body.get("tools") or [] if isinstance(tool, dict)}
    script = f"mkdir -p \"$(dirname {shlex.quote(write.path)})\" && printf '%s' " + (
        f"{shlex.quote(write.content)} > {shlex.quote(write.path)}"
    )
    if "exec_command" in names:
        return "exec_command", {"cmd": script}
    if "shell_command" in names:
        return "shell_command", {"command": script}
    if "shell" in names:
        return "shell", {"command": ["bash", "-lc", script]}
    raise ValueError(f"no shell tool among {sorted(n for n in names if n)}")
