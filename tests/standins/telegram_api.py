"""A local stand-in of the Telegram Bot API, reached through aiogram's ``TelegramAPIServer``.

It speaks the real protocol: ``POST /bot<token>/<method>`` with a form-encoded (or JSON) body,
answers ``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code", "description"}``, and
``getUpdates`` long-polls the updates a test queued (``offset`` confirms earlier ones, as on
Telegram). Every call is recorded, so a test waits for the bot's ``sendMessage`` and reads it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

BOT_ID = 777000
BOT_USER = {"id": BOT_ID, "is_bot": True, "first_name": "Orchestrator", "username": "orch_bot"}
# How often a waiting getUpdates looks at the queue (the queue is filled from another thread).
POLL_INTERVAL = 0.02


@dataclass(frozen=True)
class Call:
    method: str
    params: dict[str, Any]
    result: Any = None

    def chat_id(self) -> int:
        return int(self.params["chat_id"])

    def buttons(self) -> list[dict[str, Any]]:
        """Every inline button of the call's reply_markup, row after row."""
        markup = self.params.get("reply_markup") or {}
        return [button for row in markup.get("inline_keyboard", []) for button in row]


def person(user_id: int, name: str = "Ann") -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": name, "language_code": "en"}


class TelegramStandIn:
    def __init__(self, token: str) -> None:
        self.token = token
        self._lock = threading.Lock()
        self._queue: list[dict[str, Any]] = []
        self._calls: list[Call] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1000)
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

    def send_text(self, user: dict[str, Any], text: str) -> dict[str, Any]:
        """A private message from ``user``; a leading /command gets its bot_command entity."""
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
        return self.push({"message": message})

    def press(self, user: dict[str, Any], message: Call, data: str) -> dict[str, Any]:
        """``user`` presses the button with ``data`` under the message of ``message`` (a call
        the bot made: sendMessage or editMessageText)."""
        assert data in [b.get("callback_data") for b in message.buttons()], (data, message)
        chat_id = message.chat_id()
        sent = {
            "message_id": message.result["message_id"],
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private", "first_name": user["first_name"]},
            "from": BOT_USER,
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
        return [call for call in self.calls if call.method == method]

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
        answer = result_of(params)
        if asyncio.iscoroutine(answer):
            answer = await answer
        if method.lower() != "getupdates":  # the poll loop would drown the rest
            with self._lock:
                self._calls.append(Call(method, params, answer))
        if isinstance(answer, JSONResponse):
            return answer
        return JSONResponse({"ok": True, "result": answer})

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
        return BOT_USER

    def _deletewebhook(self, _: dict[str, Any]) -> bool:
        self.webhook_url = None
        return True

    def _setwebhook(self, params: dict[str, Any]) -> bool:
        self.webhook_url = str(params["url"])
        return True

    def _sendmessage(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._message(int(params["chat_id"]), params, self._new_message_id())

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
            "from": BOT_USER,
            "text": params.get("text", ""),
        }
        if params.get("reply_markup"):
            message["reply_markup"] = params["reply_markup"]
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


def _error(code: int, description: str) -> JSONResponse:
    return JSONResponse(
        {"ok": False, "error_code": code, "description": description}, status_code=code
    )
