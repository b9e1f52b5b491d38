"""The bot's commands and buttons: every one of them a thin read of the API.

Messages use HTML with every value from the API escaped, so a project named ``<b>`` or a spec full
of Markdown shows as written.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiogram import Bot, Dispatcher, F, Router, html
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.filters import Command, CommandStart, ExceptionTypeFilter
from aiogram.filters.callback_data import CallbackData
from aiogram.types import CallbackQuery, ErrorEvent, InlineKeyboardMarkup, Message
from aiogram.utils.keyboard import InlineKeyboardBuilder

from bot.access import AccessMiddleware
from bot.api import ApiError, OrchestratorApi
from bot.chat import ChatInbound
from core.settings import Settings

# Telegram allows 4096 characters a message; lists and specs are cut well before that.
MAX_LISTED = 30
SPEC_CHARS = 300
BACK_TO_PROJECTS = "projects"

GREETING = (
    "Hi! I am the front door of the codegen orchestrator: an AI software team that builds and "
    "ships your projects.\n\n"
    "/projects: your projects, their details and running tasks\n"
    "/tasks: the most recent tasks"
)


class ProjectButton(CallbackData, prefix="project"):
    id: str


class TaskButton(CallbackData, prefix="task"):
    id: str


def make_bot(settings: Settings) -> Bot:
    """A bot talking to ``settings.telegram_api_url`` (Telegram, a local Bot API, a stand-in)."""
    if settings.telegram_token is None:
        raise ValueError("ORCHESTRATOR_TELEGRAM_TOKEN is not set")
    session = AiohttpSession(api=TelegramAPIServer.from_base(settings.telegram_api_url))
    return Bot(
        settings.telegram_token.get_secret_value(),
        session=session,
        default=DefaultBotProperties(parse_mode=ParseMode.HTML),
    )


def build_dispatcher(
    api: OrchestratorApi, admins: Iterable[int], chat: ChatInbound | None = None
) -> Dispatcher:
    """``chat``: where a person's text messages go (the PO session); None: nowhere (they are
    answered with the commands there are)."""
    # ``api`` and ``chat`` become workflow data: aiogram hands them to the handlers naming them.
    dispatcher = Dispatcher(api=api, chat=chat)
    dispatcher.update.outer_middleware(AccessMiddleware(api, admins))
    dispatcher.include_router(build_router(chat_enabled=chat is not None))
    dispatcher.errors.register(on_api_error, ExceptionTypeFilter(ApiError))
    return dispatcher


def build_router(*, chat_enabled: bool = True) -> Router:
    router = Router(name="orchestrator")
    router.message.register(start, CommandStart())
    router.message.register(list_projects, Command("projects"))
    router.message.register(recent_tasks, Command("tasks"))
    router.message.register(unknown_command, is_command)
    if chat_enabled:
        router.message.register(to_the_chat)  # everything else a person writes
    router.callback_query.register(show_projects, F.data == BACK_TO_PROJECTS)
    router.callback_query.register(show_project, ProjectButton.filter())
    router.callback_query.register(show_task, TaskButton.filter())
    return router


# --- handlers -----------------------------------------------------------------------------------


async def start(message: Message) -> None:
    await message.answer(html.quote(GREETING))


def is_command(message: Message) -> bool:
    """Starts with a /command (Telegram marks it): not for the PO, whatever follows."""
    return any(e.type == "bot_command" and e.offset == 0 for e in message.entities or [])


async def unknown_command(message: Message) -> None:
    await message.answer(html.quote("I do not know that command.\n\n" + GREETING))


async def to_the_chat(message: Message, chat: ChatInbound) -> None:
    """A person's message: to their Product Owner, or to the task whose question it answers."""
    await chat.handle(message)


async def list_projects(message: Message, api: OrchestratorApi) -> None:
    text, markup = projects_view(await api.projects())
    await message.answer(text, reply_markup=markup)


async def show_projects(callback: CallbackQuery, api: OrchestratorApi) -> None:
    text, markup = projects_view(await api.projects())
    await _show(callback, text, markup)


async def show_project(
    callback: CallbackQuery, callback_data: ProjectButton, api: OrchestratorApi
) -> None:
    project = await api.project(callback_data.id)
    running = await api.running_tasks(project["id"])
    builder = InlineKeyboardBuilder()
    for task in running[:MAX_LISTED]:
        builder.button(text=task_label(task), callback_data=TaskButton(id=task["id"]))
    builder.button(text="« Projects", callback_data=BACK_TO_PROJECTS)
    builder.adjust(1)
    await _show(callback, project_text(project, running), builder.as_markup())


async def show_task(
    callback: CallbackQuery, callback_data: TaskButton, api: OrchestratorApi
) -> None:
    task = await api.task(callback_data.id)
    builder = InlineKeyboardBuilder()
    builder.button(text="« Project", callback_data=ProjectButton(id=task["project_id"]))
    await _show(callback, task_text(task), builder.as_markup())


async def recent_tasks(message: Message, api: OrchestratorApi) -> None:
    tasks = await api.tasks(limit=10)
    if not tasks:
        await message.answer("No tasks yet.")
        return
    builder = InlineKeyboardBuilder()
    for task in tasks:
        builder.button(text=task_label(task), callback_data=TaskButton(id=task["id"]))
    builder.adjust(1)
    await message.answer(html.bold("Recent tasks"), reply_markup=builder.as_markup())


async def on_api_error(event: ErrorEvent) -> None:
    """The API failed or is away: say so in the chat instead of staying silent."""
    text = html.quote(str(event.exception))
    update = event.update
    if update.message is not None:
        await update.message.answer(text)
    elif update.callback_query is not None:
        await update.callback_query.answer(str(event.exception)[:200], show_alert=True)


async def _show(callback: CallbackQuery, text: str, markup: InlineKeyboardMarkup | None) -> None:
    """Replace the message the button belongs to, so navigating does not flood the chat."""
    if isinstance(callback.message, Message):
        await callback.message.edit_text(text, reply_markup=markup)
    elif callback.message is not None and callback.bot is not None:
        # Too old to edit (Telegram says "inaccessible"): send a new one.
        await callback.bot.send_message(callback.message.chat.id, text, reply_markup=markup)
    await callback.answer()


# --- views --------------------------------------------------------------------------------------


def projects_view(projects: list[dict[str, Any]]) -> tuple[str, InlineKeyboardMarkup | None]:
    if not projects:
        return "No projects yet.", None
    builder = InlineKeyboardBuilder()
    for project in projects[:MAX_LISTED]:
        label = f"{project['name']} · {project['status']}"
        builder.button(text=label, callback_data=ProjectButton(id=project["id"]))
    builder.adjust(1)
    more = f" (the newest {MAX_LISTED})" if len(projects) > MAX_LISTED else ""
    return f"{html.bold('Projects')}{more}: pick one for its details.", builder.as_markup()


def project_text(project: dict[str, Any], running: list[dict[str, Any]]) -> str:
    lines = [f"{html.bold(project['name'])} · {html.quote(project['status'])}"]
    if project.get("description"):
        lines.append(html.quote(_cut(project["description"])))
    if project.get("repository") or project.get("repo_full_name"):
        where = project.get("repo_full_name") or project["repository"]
        lines.append(f"Repository: {html.code(where)}")
    if project.get("modules"):
        lines.append(f"Modules: {html.quote(', '.join(project['modules']))}")
    lines.append("")
    if running:
        lines.append(html.bold(f"Running tasks ({len(running)})"))
        lines.extend(f"• {html.quote(task_label(task))}" for task in running[:MAX_LISTED])
    else:
        lines.append("No running tasks.")
    return "\n".join(lines)


def task_label(task: dict[str, Any]) -> str:
    return f"{task['status']} · {task['type']} {task['id'][:8]}"


def task_text(task: dict[str, Any]) -> str:
    lines = [
        f"{html.bold('Task')} {html.code(task['id'])}",
        f"Status: {html.bold(task['status'])}",
        f"Type: {html.quote(task['type'])} ({html.quote(task['action'])})",
        f"Workflow: {html.code(task['workflow_id'])}",
        f"Created: {html.quote(task['created_at'])}",
    ]
    if task.get("spec"):
        lines += ["", html.quote(_cut(task["spec"]))]
    if task.get("error"):
        lines += ["", f"Error: {html.quote(_cut(task['error']))}"]
    return "\n".join(lines)


def _cut(text: str, limit: int = SPEC_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
