"""Token counts read from model API answers as they stream past, without holding them back.

Anthropic Messages: ``message_start`` carries the input (and cache) tokens, each
``message_delta`` the output tokens so far. OpenAI Responses: ``response.completed`` (or
``.incomplete`` / ``.failed``) carries ``response.usage``; Chat Completions a final ``usage``.
A JSON (non-streaming) answer carries the same ``usage`` objects in its body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Provider(StrEnum):
    anthropic = "anthropic"
    openai = "openai"


# A JSON answer larger than this is passed through without being read for usage.
MAX_JSON_BODY = 8 * 1024 * 1024


@dataclass
class Usage:
    model: str = ""
    tokens_in: int = 0  # every input token, cached ones included
    tokens_out: int = 0
    cache_read: int = 0
    cache_write: int = 0
    seen: bool = False  # the answer said how many tokens it used


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def apply_anthropic(usage: Usage, data: dict[str, Any]) -> None:
    """``data`` is a usage object (message_start's or message_delta's, or a message's)."""
    usage.seen = True
    fields = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    if any(data.get(name) is not None for name in fields):
        # Later events repeat the input counts (cumulative), so they replace, never add.
        fresh = _int(data.get("input_tokens"))
        usage.cache_write = _int(data.get("cache_creation_input_tokens"))
        usage.cache_read = _int(data.get("cache_read_input_tokens"))
        usage.tokens_in = fresh + usage.cache_write + usage.cache_read
    if data.get("output_tokens") is not None:
        usage.tokens_out = _int(data.get("output_tokens"))


def apply_openai(usage: Usage, data: dict[str, Any]) -> None:
    """A Responses (input/output_tokens) or Chat Completions (prompt/completion_tokens) usage."""
    usage.seen = True
    usage.tokens_in = _int(data.get("input_tokens", data.get("prompt_tokens")))
    usage.tokens_out = _int(data.get("output_tokens", data.get("completion_tokens")))
    details = data.get("input_tokens_details") or data.get("prompt_tokens_details") or {}
    usage.cache_read = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0


class UsageReader:
    """Fed every chunk of an answer; ``usage`` holds what it has read so far."""

    def __init__(self, provider: Provider, model: str, content_type: str) -> None:
        self.provider = provider
        self.usage = Usage(model=model)
        self.streaming = content_type.startswith("text/event-stream")
        self.is_json = "json" in content_type
        self._buffer = b""
        self._body = bytearray()
        self._too_big = False

    def feed(self, chunk: bytes) -> None:
        if self.streaming:
            self._feed_sse(chunk)
        elif self.is_json and not self._too_big:
            self._body.extend(chunk)
            if len(self._body) > MAX_JSON_BODY:
                self._too_big = True
                self._body.clear()

    def finish(self) -> Usage:
        if self.streaming and self._buffer.strip():
            self._event(self._buffer)
        elif self.is_json and self._body and not self._too_big:
            try:
                body = json.loads(self._body)
            except ValueError:
                body = None
            if isinstance(body, dict):
                self._message(body)
        self._buffer = b""
        return self.usage

    def _feed_sse(self, chunk: bytes) -> None:
        # Normalised on the whole pending text: a CRLF may be cut between two chunks.
        self._buffer = (self._buffer + chunk).replace(b"\r\n", b"\n")
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            self._event(event)

    def _event(self, raw: bytes) -> None:
        # Only events that carry usage are worth decoding; text deltas are most of the stream.
        if b'"usage"' not in raw:
            return
        lines = [line[5:].lstrip() for line in raw.split(b"\n") if line.startswith(b"data:")]
        try:
            data = json.loads(b"\n".join(lines))
        except ValueError:
            return
        if isinstance(data, dict):
            self._streamed(data)

    def _streamed(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if self.provider is Provider.anthropic:
            if kind == "message_start" and isinstance(data.get("message"), dict):
                self._message(data["message"])
            elif kind == "message_delta" and isinstance(data.get("usage"), dict):
                apply_anthropic(self.usage, data["usage"])
        elif isinstance(data.get("response"), dict):  # response.completed / incomplete / failed
            self._message(data["response"])
        elif isinstance(data.get("usage"), dict):  # a chat.completion.chunk with usage
            self._message(data)

    def _message(self, body: dict[str, Any]) -> None:
        if isinstance(body.get("model"), str) and body["model"]:
            self.usage.model = body["model"]
        usage = body.get("usage")
        if not isinstance(usage, dict):
            return
        if self.provider is Provider.anthropic:
            apply_anthropic(self.usage, usage)
        else:
            apply_openai(self.usage, usage)
