"""The bot's thin async client of the API: only the reads its commands show.

For now the bot calls the API with the stack's admin key (``Settings.read_api_key()``): it needs
to look users up by Telegram ID, which only admins may. Acting as each chat's own user comes with
the Product Owner sessions, which get keys scoped to their user.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from core.contracts.events import TaskStatus
from core.settings import Settings


class ApiError(Exception):
    """The API could not be reached or refused a request; the text is fit for a chat."""


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
        try:
            response = await self.http.get(path, params=clean)
        except httpx.TransportError as exc:
            raise ApiError(f"The orchestrator API at {self.base_url} is unreachable.") from exc
        if response.is_error:
            raise ApiError(_problem(response))
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


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
        detail = body.get("detail") or body.get("title")
    except ValueError:
        detail = None
    return (
        f"The orchestrator API answered {response.status_code}: {detail or response.reason_phrase}"
    )
