"""A local stand-in of the Telegram Bot API, reached through aiogram's ``TelegramAPIServer``.

It speaks the real protocol: ``POST /bot<token>/<method>`` with a form-encoded (or JSON) body,
answers ``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code", "description"}``, and
``getUpdates`` long-polls the updates a test queued (``offset`` confirms earlier ones, as on
Telegram). Every call is recorded, so a test waits for the bot's ``sendMessage`` and reads it.

Like Telegram, text sent with ``parse_mode=HTML`` is parsed: an unknown or unbalanced tag, or a
bad entity, is a 400 "Bad Request: can't parse entities: ..."; a text longer than 4096 characters
once parsed is a 400 too. A test can make a method fail for its next calls (:meth:`fail`), and
a user can reply to a message the bot sent (``send_text(..., reply_to=...)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from testing.standins.server import serve


def bot_user(token: str) -> dict[str, Any]:
    """The bot itself: as on Telegram, its id is the token's first part."""
    bot_id = int(token.split(":", 1)[0])
    return {"id": bot_id, "is_bot": True, "first_name": "Orchestrator", "username": "orch_bot"}


# How often a waiting getUpdates looks at the queue (the queue is filled from another thread).
POLL_INTERVAL = 0.02
TEXT_LIMIT = 4096
# Telegram's HTML: these tags, nothing else (https://core.telegram.org/bots/api#html-style).
HTML_TAGS = frozenset(
    {"a", "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler",
     "tg-emoji", "code", "pre", "blockquote"}
)  # fmt: skip
ENTITY = re.compile(r"&(?:lt|gt|amp|quot|#[0-9]{1,7}|#x[0-9a-fA-F]{1,6});")


@dataclass(frozen=True)
class Call:
    method: str
    params: dict[str, Any]
    result: Any = None
    # The error Telegram answered instead of a result ("400: Bad Request: ..."), if any.
    error: str | None = None

    def chat_id(self) -> int:
        return int(self.params["chat_id"])

    def buttons(self) -> list[dict[str, Any]]:
        """Every inline button of the call's reply_markup, row after row."""
        markup = self.params.get("reply_markup") or {}
        return [button for row in markup.get("inline_keyboard", []) for button in row]


@dataclass
class Failure:
    """How the next calls of one method fail (see :meth:`TelegramStandIn.fail`)."""

    times: int
    code: int
    description: str
    retry_after: int | None = None
    chat_id: int | None = None  # only calls to this chat fail; None: every call
    hits: list[dict[str, Any]] = field(default_factory=list)


def person(user_id: int, name: str = "Ann") -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": name, "language_code": "en"}


class TelegramStandIn:
    def __init__(self, token: str) -> None:
        self.token = token
        self.bot_user = bot_user(token)
        self._lock = threading.Lock()
        self._queue: list[dict[str, Any]] = []
        self._calls: list[Call] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1000)
        self._failures: dict[str, Failure] = {}
        # What the bot sent, by (chat id, message id): a user may reply to it.
        self._sent: dict[tuple[int, int], dict[str, Any]] = {}
        self.webhook_url: str | None = None
        self.closing = False
        self.url = ""  # where it is served, set by whoever serves it
        self.app = Starlette(
            routes=[Route("/bot{token}/{method}", self.handle, methods=["GET", "POST"])]
        )

    # --- what tests do --------------------------------------------------------------------------

    def push(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue an update (its update_id is assigned here) for the bot's next getUpdates."""
        with self._lock:
            update = {"update_id": next(self._update_ids), **update}
            self._queue.append(update)
        return update

    def send_text(
        self, user: dict[str, Any], text: str, *, reply_to: Call | None = None
    ) -> dict[str, Any]:
        """A private message from ``user``; a leading /command gets its bot_command entity.
        ``reply_to``: a message the bot sent (its sendMessage call) that this one answers."""
        message: dict[str, Any] = {
            "message_id": self._new_message_id(),
            "date": int(time.time()),
            "chat": {"id": user["id"], "type": "private", "first_name": user["first_name"]},
            "from": user,
            "text": text,
        }
        if text.startswith("/"):
            command = text.split()[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        if reply_to is not None:
            key = (reply_to.chat_id(), int(reply_to.result["message_id"]))
            with self._lock:
                message["reply_to_message"] = self._sent[key]
        return self.push({"message": message})

    def fail(
        self,
        method: str,
        times: int = 1,
        *,
        code: int = 502,
        description: str = "Bad Gateway",
        retry_after: int | None = None,
        chat_id: int | None = None,
    ) -> Failure:
        """Make the next ``times`` calls of ``method`` (to ``chat_id``, if given) fail with
        ``code`` (429 with ``retry_after`` is Telegram's flood control); the failed calls are in
        ``.hits``. A later ``fail`` of the same method replaces this one."""
        failure = Failure(times, code, description, retry_after, chat_id)
        with self._lock:
            self._failures[method.lower()] = failure
        return failure

    def press(self, user: dict[str, Any], message: Call, data: str) -> dict[str, Any]:
        """``user`` presses the button with ``data`` under the message of ``message`` (a call
        the bot made: sendMessage or editMessageText)."""
        assert data in [b.get("callback_data") for b in message.buttons()], (data, message)
        chat_id = message.chat_id()
        sent = {
            "message_id": message.result["message_id"],
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private", "first_name": user["first_name"]},
            "from": self.bot_user,
            "text": message.params.get("text", ""),
        }
        query = {
            "id": f"cb{next(self._update_ids)}",
            "from": user,
            "message": sent,
            "chat_instance": f"ci{chat_id}",
            "data": data,
        }
        return self.push({"callback_query": query})

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def calls_of(self, method: str) -> list[Call]:
        """The calls of ``method`` that succeeded."""
        return [call for call in self.calls if call.method == method and call.error is None]

    def refused_calls(self, method: str) -> list[Call]:
        """The calls of ``method`` answered with an error (a parse error, an injected failure)."""
        return [call for call in self.calls if call.method == method and call.error is not None]

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    # --- the protocol ---------------------------------------------------------------------------

    async def handle(self, request: Request) -> JSONResponse:
        if request.path_params["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.path_params["method"]
        params = await _params(request)
        result_of = getattr(self, f"_{method.lower()}", None)
        if result_of is None:
            return _error(404, "Not Found: method not found")
        answer = self._injected_failure(method, params) or self._check_text(method, params)
        if answer is None:
            answer = result_of(params)
            if asyncio.iscoroutine(answer):
                answer = await answer
        if method.lower() != "getupdates":  # the poll loop would drown the rest
            error = None
            if isinstance(answer, JSONResponse):
                body = json.loads(bytes(answer.body))
                error = f"{body['error_code']}: {body['description']}"
            with self._lock:
                self._calls.append(Call(method, params, None if error else answer, error))
        if isinstance(answer, JSONResponse):
            return answer
        return JSONResponse({"ok": True, "result": answer})

    def _injected_failure(self, method: str, params: dict[str, Any]) -> JSONResponse | None:
        with self._lock:
            failure = self._failures.get(method.lower())
            if failure is None or len(failure.hits) >= failure.times:
                return None
            if failure.chat_id is not None and str(params.get("chat_id")) != str(failure.chat_id):
                return None
            failure.hits.append(params)
        extra = {"retry_after": failure.retry_after} if failure.retry_after is not None else None
        return _error(failure.code, failure.description, extra)

    def _check_text(self, method: str, params: dict[str, Any]) -> JSONResponse | None:
        """Parse the text as Telegram does: its errors, or None when it is fine."""
        if method.lower() not in ("sendmessage", "editmessagetext"):
            return None
        text = str(params.get("text", ""))
        shown = text
        if str(params.get("parse_mode", "")).upper() == "HTML":
            try:
                shown = parse_html(text)
            except ValueError as exc:
                return _error(400, f"Bad Request: can't parse entities: {exc}")
        if not shown.strip():
            return _error(400, "Bad Request: message text is empty")
        if len(shown.encode("utf-16-le")) // 2 > TEXT_LIMIT:
            return _error(400, "Bad Request: message is too long")
        return None

    async def _getupdates(self, params: dict[str, Any]) -> Any:
        if self.webhook_url is not None:
            return _error(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = int(params.get("offset", 0))
        limit = int(params.get("limit", 100))
        deadline = time.monotonic() + float(params.get("timeout", 0))
        while True:
            with self._lock:
                # An offset confirms every update before it: Telegram forgets those.
                self._queue = [u for u in self._queue if u["update_id"] >= offset]
                ready = self._queue[:limit]
            if ready or self.closing or time.monotonic() >= deadline:
                return ready
            await asyncio.sleep(POLL_INTERVAL)

    def _getme(self, _: dict[str, Any]) -> dict[str, Any]:
        return self.bot_user

    def _deletewebhook(self, _: dict[str, Any]) -> bool:
        self.webhook_url = None
        return True

    def _setwebhook(self, params: dict[str, Any]) -> bool:
        self.webhook_url = str(params["url"])
        return True

    def _sendmessage(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        message = self._message(chat_id, params, self._new_message_id())
        with self._lock:
            self._sent[(chat_id, message["message_id"])] = message
        return message

    def _editmessagetext(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._message(int(params["chat_id"]), params, int(params["message_id"]))

    def _answercallbackquery(self, _: dict[str, Any]) -> bool:
        return True

    def _sendchataction(self, _: dict[str, Any]) -> bool:
        return True

    def _message(self, chat_id: int, params: dict[str, Any], message_id: int) -> dict[str, Any]:
        message = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private"},
            "from": self.bot_user,
            "text": params.get("text", ""),
        }
        markup = params.get("reply_markup")
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            message["reply_markup"] = markup  # a Message carries inline keyboards only
        return message

    def _new_message_id(self) -> int:
        return next(self._message_ids)


async def _params(request: Request) -> dict[str, Any]:
    """The method's parameters: query string, then a form-encoded or JSON body (aiogram sends
    forms; nested values such as reply_markup are JSON strings inside it)."""
    params: dict[str, Any] = dict(request.query_params)
    raw = await request.body()
    if raw:
        if request.headers.get("content-type", "").startswith("application/json"):
            params.update(json.loads(raw))
        else:
            params.update(parse_qsl(raw.decode(), keep_blank_values=True))
    return {key: _decode(value) for key, value in params.items()}


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _error(code: int, description: str, parameters: dict[str, Any] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return JSONResponse(body, status_code=code)


def parse_html(text: str) -> str:
    """The text Telegram would show for ``text`` in its HTML mode; ValueError (worded like
    Telegram's) for what it refuses: unknown or unbalanced tags, tags in code, bad entities."""
    shown: list[str] = []
    stack: list[str] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char == "&":
            entity = ENTITY.match(text, pos)
            if entity is None:
                raise ValueError(f"Unsupported HTML entity at byte offset {_offset(text, pos)}")
            shown.append(html.unescape(entity.group()))
            pos = entity.end()
        elif char == "<":
            end = text.find(">", pos)
            if end < 0:
                raise ValueError(f"Unclosed start tag at byte offset {_offset(text, pos)}")
            _tag(text[pos + 1 : end], stack, _offset(text, pos))
            pos = end + 1
        elif char == ">":
            raise ValueError(f"Unexpected end tag at byte offset {_offset(text, pos)}")
        else:
            shown.append(char)
            pos += 1
    if stack:
        raise ValueError(f'Can\'t find end tag corresponding to start tag "{stack[-1]}"')
    return "".join(shown)


def _tag(inside: str, stack: list[str], offset: int) -> None:
    if inside.startswith("/"):
        name = inside[1:].strip().lower()
        if not stack or stack[-1] != name:
            expected = f'"</{stack[-1]}>"' if stack else "no end tag"
            found = f'"<{inside}>"'
            raise ValueError(
                f"Unmatched end tag at byte offset {offset}, expected {expected}, found {found}"
            )
        stack.pop()
        return
    name = (inside.split(maxsplit=1) or [""])[0].lower()
    if name not in HTML_TAGS:
        raise ValueError(f'Unsupported start tag "{name}" at byte offset {offset}')
    # Inside code nothing is a tag; pre may hold one code (for its language) and nothing else.
    if stack and (stack[-1] == "code" or (stack[-1] == "pre" and name != "code")):
        raise ValueError(f'Unsupported start tag "{name}" at byte offset {offset} inside code')
    if name == "a" and not re.search(r'\bhref="[^"]+"', inside):
        raise ValueError(f"Can't find href of the link at byte offset {offset}")
    stack.append(name)


def _offset(text: str, pos: int) -> int:
    return len(text[:pos].encode())


@contextlib.contextmanager
def serving(token: str) -> Iterator[TelegramStandIn]:
    """A stand-in for the bot ``token``, served on loopback (its ``url`` set) for the block; at
    its end a waiting getUpdates returns, so the server stops at once."""
    standin = TelegramStandIn(token)
    with serve(standin.app) as url:
        standin.url = url
        yield standin
        standin.closing = True
