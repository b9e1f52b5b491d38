"""A stand-in for the Anthropic and OpenAI APIs: records what reaches it, answers with usage.

Streams are SSE shaped as the providers send them. ``hold``, when set, pauses every stream after
its first text delta until the test releases it, which shows whether the path in between
buffers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ANTHROPIC_MODEL = "claude-test"
OPENAI_MODEL = "gpt-test"
# Anthropic: fresh input, cache writes, cache reads, output.
A_IN, A_CACHE_WRITE, A_CACHE_READ, A_OUT = 100, 20, 300, 50
# OpenAI: all input (cached included), of which cached, output.
O_IN, O_CACHED, O_OUT = 200, 80, 40


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: dict[str, Any]


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def anthropic_events(text: list[str]) -> list[bytes]:
    usage = {
        "input_tokens": A_IN,
        "cache_creation_input_tokens": A_CACHE_WRITE,
        "cache_read_input_tokens": A_CACHE_READ,
        "output_tokens": 1,
    }
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": []}
    events = [
        sse("message_start", {"type": "message_start", "message": {**message, "usage": usage}}),
        sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        ),
    ]
    for piece in text:
        delta = {"type": "text_delta", "text": piece}
        events.append(
            sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    events += [
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": A_OUT},
            },
        ),
        sse("message_stop", {"type": "message_stop"}),
    ]
    return events


def openai_usage() -> dict[str, Any]:
    return {
        "input_tokens": O_IN,
        "input_tokens_details": {"cached_tokens": O_CACHED},
        "output_tokens": O_OUT,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": O_IN + O_OUT,
    }


def openai_events(text: list[str]) -> list[bytes]:
    response = {"id": "resp_1", "object": "response", "model": OPENAI_MODEL, "status": ""}
    events = [
        sse(
            "response.created",
            {"type": "response.created", "response": {**response, "status": "in_progress"}},
        )
    ]
    for piece in text:
        events.append(
            sse(
                "response.output_text.delta", {"type": "response.output_text.delta", "delta": piece}
            )
        )
    completed = {**response, "status": "completed", "usage": openai_usage()}
    events.append(sse("response.completed", {"type": "response.completed", "response": completed}))
    return events


TEXT = ["Hello", " from", " the", " stand-in"]


@dataclass
class Upstream:
    seen: list[Seen] = field(default_factory=list)
    hold: asyncio.Event | None = None
    streams_finished: int = 0

    def anthropic_stream(self) -> bytes:
        return b"".join(anthropic_events(TEXT))

    def openai_stream(self) -> bytes:
        return b"".join(openai_events(TEXT))

    async def _record(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        self.seen.append(
            Seen(
                request.method,
                request.url.path,
                request.url.query,
                dict(request.headers.items()),
                body,
            )
        )
        return body

    def _stream(self, events: list[bytes]) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            # message_start / response.created and the first delta, then (maybe) wait.
            for index, event in enumerate(events):
                yield event
                if index == 2 and self.hold is not None:
                    await self.hold.wait()
            self.streams_finished += 1

        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def messages(self, request: Request) -> Response:
        body = await self._record(request)
        if body.get("stream"):
            return self._stream(anthropic_events(TEXT))
        usage = {
            "input_tokens": A_IN,
            "cache_creation_input_tokens": A_CACHE_WRITE,
            "cache_read_input_tokens": A_CACHE_READ,
            "output_tokens": A_OUT,
        }
        content = [{"type": "text", "text": "".join(TEXT)}]
        return JSONResponse(
            {
                "id": "msg_2",
                "type": "message",
                "model": ANTHROPIC_MODEL,
                "content": content,
                "usage": usage,
            }
        )

    async def count_tokens(self, request: Request) -> Response:
        await self._record(request)
        return JSONResponse({"input_tokens": 42})

    async def responses(self, request: Request) -> Response:
        body = await self._record(request)
        if body.get("stream"):
            return self._stream(openai_events(TEXT))
        return JSONResponse(
            {
                "id": "resp_2",
                "object": "response",
                "model": OPENAI_MODEL,
                "status": "completed",
                "usage": openai_usage(),
            }
        )

    async def chat(self, request: Request) -> Response:
        await self._record(request)
        usage = {
            "prompt_tokens": O_IN,
            "completion_tokens": O_OUT,
            "prompt_tokens_details": {"cached_tokens": O_CACHED},
        }
        choice = {"index": 0, "message": {"role": "assistant", "content": "hi"}}
        return JSONResponse(
            {
                "id": "c1",
                "object": "chat.completion",
                "model": OPENAI_MODEL,
                "choices": [choice],
                "usage": usage,
            }
        )

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/messages", self.messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
                Route("/v1/responses", self.responses, methods=["POST"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
            ]
        )
