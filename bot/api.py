"""The bot's thin async client of the API: the reads its commands show, and the chat's writes
(a user's message to the PO session, a user's answer to a task's question).

For now the bot calls the API with the stack's admin key (``Settings.read_api_key()``): it needs
to look users up by Telegram ID, which only admins may. Acting as each chat's own user comes with
the Product Owner sessions, which get keys scoped to their user.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from core.contracts.chat import ChatMessageAccepted, ChatMessageIn
from core.enums import TaskStatus
from core.settings import Settings


class ApiError(Exception):
    """The API could not be reached or refused a request; the text is fit for a chat.

    ``status`` is the HTTP status (None: not reached), ``detail`` the problem's own words.
    """

    def __init__(self, text: str, *, status: int | None = None, detail: str | None = None):
        super().__init__(text)
        self.status = status
        self.detail = detail or text

    @property
    def transient(self) -> bool:
        """Worth trying again: not reached, overloaded (429) or failing on its side (5xx)."""
        return self.status is None or self.status == 429 or self.status >= 500


class OrchestratorApi:
    def __init__(
        self, base_url: str, api_key: str | None, *, timeout: float = 10.0, **client: Any
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url
        self.http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout, **client)

    @classmethod
    def from_settings(cls, settings: Settings, **client: Any) -> OrchestratorApi:
        return cls(settings.effective_api_url, settings.read_api_key(), **client)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def get(self, path: str, **params: Any) -> Any:
        clean = {key: value for key, value in params.items() if value is not None}
        return await self._request("GET", path, params=clean)

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        return await self._request("POST", path, json=body)

    async def _request(self, method: str, path: str, **options: Any) -> Any:
        try:
            response = await self.http.request(method, path, **options)
        except httpx.TransportError as exc:
            raise ApiError(f"The orchestrator API at {self.base_url} is unreachable.") from exc
        if response.is_error:
            detail = _detail(response)
            raise ApiError(_problem(response, detail), status=response.status_code, detail=detail)
        return response.json()

    # --- what the commands read -----------------------------------------------------------------

    async def user_by_telegram_id(self, telegram_id: int) -> dict[str, Any] | None:
        found: list[dict[str, Any]] = await self.get("/users", telegram_id=telegram_id)
        return found[0] if found else None

    async def projects(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self.get("/projects")
        return found

    async def project(self, project_id: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.get(f"/projects/{quote(project_id, safe='')}")
        return found

    async def tasks(
        self, *, project_id: str | None = None, limit: int = 10
    ) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self.get("/tasks", project_id=project_id, limit=limit)
        return found

    async def running_tasks(self, project_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """A project's tasks that have not ended (queued, running, waiting for a human)."""
        recent = await self.tasks(project_id=project_id, limit=limit)
        return [task for task in recent if not TaskStatus(task["status"]).is_terminal]

    async def task(self, task_id: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.get(f"/tasks/{quote(task_id, safe='')}")
        return found

    # --- what the chat writes -------------------------------------------------------------------

    async def post_chat_message(self, chat_id: int, message: ChatMessageIn) -> ChatMessageAccepted:
        """A user's message, on its way to the chat's PO session (202 once it is durable)."""
        body = await self.post(f"/chats/{chat_id}/messages", message.model_dump(mode="json"))
        return ChatMessageAccepted.model_validate(body)

    async def respond(self, task_id: str, answer: str) -> dict[str, Any]:
        """A user's answer to the question of a task waiting for a person."""
        found: dict[str, Any] = await self.post(
            f"/tasks/{quote(task_id, safe='')}/respond", {"answer": answer}
        )
        return found


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        detail = body.get("detail") or body.get("title")
    except (ValueError, AttributeError):
        detail = None
    return str(detail or response.reason_phrase)


def _problem(response: httpx.Response, detail: str) -> str:
    return f"The orchestrator API answered {response.status_code}: {detail}"
