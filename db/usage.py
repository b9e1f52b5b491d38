"""Model usage: the calls the gateway made for a task (``model_usage``), and their totals; what
the projects used per UTC day (model calls, Worker time, deploys); their daily budgets.

The database is the truth: a gateway that (re)opens a task reads its totals back, so a budget
holds across a crash of the process serving it, and any process can read ``load_usage``.

A project's usage (:func:`usage_report`) is summed from the same rows, one query per measure:

- model calls: the ``model_usage`` ledger of its tasks, by the day of each call, counted as
  ``TaskUsage.add`` counts them (a refused call counts as refused, its tokens and cost as
  nothing), so a project's totals are the sums of its tasks' ledgers;
- Worker minutes: see :func:`_worker_minutes`;
- deploys: its deploy tasks by the day they were asked for, with how many succeeded and failed.

Calls of the Product Owner sessions (their ledger's task is the session, ``po-<chat>``) belong to
a chat, not a project, and are in none of these.

A daily budget (``projects.daily_budget_usd``) is crossed once the model calls of a UTC day cost
more; :func:`crossed_budgets` finds those not told yet, :func:`record_budget_notice` tells the
project's chat once per day (a ``budget_notices`` row with its notes, in one transaction).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta
from itertools import groupby
from typing import Any

from sqlalchemy import Date, and_, case, cast, func, literal_column, or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.contracts.agents import TaskUsage
from core.contracts.base import as_utc, utcnow
from core.contracts.chat import ChatNote, encode_chat_entry
from core.enums import TERMINAL_EVENTS, EventType, TaskStatus, TaskType
from core.ids import chat_stream
from core.logging import get_logger
from db import outbox
from db.engine import Database
from db.incidents import NOTE_SOURCE
from db.tables import BudgetNotice, ModelUsage, Project, Task, TaskEventRow

log = get_logger(__name__)

# What _model_calls sums, in the order it selects them.
MODEL_FIGURES = (
    "calls",
    "refused_calls",
    "tokens_in",
    "tokens_out",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "unpriced_calls",
)
# The development graph's stages (activities/development.py), all run in the task's Worker.
WORKER_STAGES = ("developer", "tester", "pull_request")


async def load_usage(db: Database, task_id: str) -> TaskUsage:
    """A task's totals as the database has them (every call the gateway answered or refused)."""
    # A task makes tens to hundreds of calls: summing its rows here keeps one definition of the
    # totals (``TaskUsage.add``) for the gateway's memory and for the database alike.
    query = (
        select(ModelUsage).where(col(ModelUsage.task_id) == task_id).order_by(col(ModelUsage.id))
    )
    usage = TaskUsage(task_id=task_id)
    async with db.session() as session:
        for row in await session.exec(query):
            usage.add(row)
    return usage


async def save_call(db: Database, row: ModelUsage) -> None:
    async with db.session() as session:
        session.add(row)
        await session.commit()


# --- what the projects used, per UTC day -----------------------------------------------------


@dataclass
class Totals:
    """What was used: by one project on one day, by one project, or by all."""

    calls: int = 0  # model calls answered (or failed upstream), refused ones not counted
    refused_calls: int = 0  # refused by the gateway: past the task's budget
    tokens_in: int = 0
    tokens_out: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_calls: int = 0  # calls of models without a known price: tokens but no cost
    worker_minutes: float = 0.0
    deploys: int = 0  # deploy tasks asked for
    deploys_succeeded: int = 0
    deploys_failed: int = 0

    def add(self, other: Totals) -> None:
        for each in fields(self):
            setattr(self, each.name, getattr(self, each.name) + getattr(other, each.name))
        self.cost_usd = round(self.cost_usd, 8)
        self.worker_minutes = round(self.worker_minutes, 2)


@dataclass
class UsageReport:
    """Usage from ``since`` to ``until`` (UTC days, both included)."""

    since: date
    until: date
    total: Totals = field(default_factory=Totals)
    # By project id, and by project id and day: only projects and days that used something.
    projects: dict[str, Totals] = field(default_factory=dict)
    days: dict[str, dict[date, Totals]] = field(default_factory=dict)


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


async def usage_report(
    session: AsyncSession,
    since: date,
    *,
    until: date | None = None,
    project_ids: Collection[str] | None = None,
    now: datetime | None = None,
) -> UsageReport:
    """Every project's usage per UTC day from ``since`` to ``until`` (default: today), or only
    ``project_ids``'; the days and projects that used nothing are left out."""
    now = as_utc(now or utcnow())
    until = until or now.date()
    window = (day_start(since), day_start(until + timedelta(days=1)))
    found: dict[tuple[str, date], Totals] = defaultdict(Totals)
    worker_minutes = await _worker_minutes(session, window, project_ids, now)
    for (project_id, day), minutes in worker_minutes.items():
        found[project_id, day].worker_minutes = round(minutes, 2)
    for project_id, day, values in await _model_calls(session, window, project_ids):
        for name, value in values.items():
            setattr(found[project_id, day], name, value)
    for project_id, day, status, count in await _deploys(session, window, project_ids):
        totals = found[project_id, day]
        totals.deploys += count
        if status == TaskStatus.completed:
            totals.deploys_succeeded += count
        elif status == TaskStatus.failed:
            totals.deploys_failed += count
    report = UsageReport(since=since, until=until)
    for (project_id, day), totals in sorted(found.items()):
        report.days.setdefault(project_id, {})[day] = totals
        report.projects.setdefault(project_id, Totals()).add(totals)
        report.total.add(totals)
    return report


def _utc_day(session: AsyncSession, column: Any) -> Any:
    """The UTC day of a timestamp column, as SQL: both databases group by it."""
    if session.get_bind().dialect.name == "postgresql":
        # A literal, not a parameter: the same expression in GROUP BY must be the same text.
        return cast(func.timezone(literal_column("'UTC'"), column), Date)
    # SQLite keeps timestamps as UTC text ("2026-12-10 09:30:00.000000").
    return func.date(column, type_=Date)


def _of_projects(query: Any, project_ids: Collection[str] | None) -> Any:
    return query if project_ids is None else query.where(col(Task.project_id).in_(project_ids))


async def _model_calls(
    session: AsyncSession, window: tuple[datetime, datetime], project_ids: Collection[str] | None
) -> list[tuple[str, date, dict[str, Any]]]:
    """The ledger's rows of the projects' tasks, summed per project and day of the call."""
    refused = col(ModelUsage.refused).is_(True)

    def answered(value: Any) -> Any:
        return func.coalesce(func.sum(case((refused, 0), else_=value)), 0)

    day = _utc_day(session, col(ModelUsage.created_at))
    unpriced = and_(
        col(ModelUsage.cost_usd).is_(None),
        or_(col(ModelUsage.tokens_in) > 0, col(ModelUsage.tokens_out) > 0),
    )
    query = (
        select(  # type: ignore[call-overload]
            Task.project_id,
            day,
            answered(1),
            func.coalesce(func.sum(case((refused, 1), else_=0)), 0),
            answered(ModelUsage.tokens_in),
            answered(ModelUsage.tokens_out),
            answered(ModelUsage.cache_read_tokens),
            answered(ModelUsage.cache_write_tokens),
            func.coalesce(func.sum(case((refused, None), else_=ModelUsage.cost_usd)), 0.0),
            answered(case((unpriced, 1), else_=0)),
        )
        .join(Task, col(Task.id) == col(ModelUsage.task_id))
        .where(col(ModelUsage.created_at) >= window[0], col(ModelUsage.created_at) < window[1])
        .group_by(Task.project_id, day)
    )
    rows = await session.exec(_of_projects(query, project_ids))
    return [
        (
            project_id,
            _as_date(day_of),
            {
                name: round(float(value), 8) if name == "cost_usd" else int(value)
                for name, value in zip(MODEL_FIGURES, values, strict=True)
            },
        )
        for project_id, day_of, *values in rows
    ]


async def _deploys(
    session: AsyncSession, window: tuple[datetime, datetime], project_ids: Collection[str] | None
) -> list[tuple[str, date, TaskStatus, int]]:
    """The projects' deploy tasks by the day they were asked for, counted by status."""
    day = _utc_day(session, col(Task.created_at))
    query = (
        select(Task.project_id, day, Task.status, func.count())
        .where(
            col(Task.type) == TaskType.deploy,
            col(Task.created_at) >= window[0],
            col(Task.created_at) < window[1],
        )
        .group_by(Task.project_id, day, Task.status)
    )
    rows = await session.exec(_of_projects(query, project_ids))
    return [
        (project_id, _as_date(day_of), TaskStatus(status), int(count))
        for project_id, day_of, status, count in rows
    ]


async def _worker_minutes(
    session: AsyncSession,
    window: tuple[datetime, datetime],
    project_ids: Collection[str] | None,
    now: datetime,
) -> dict[tuple[str, date], float]:
    """Minutes the projects' engineering tasks had their Worker, per project and UTC day.

    What it measures, from the tasks' events: a task has its Worker from the first stage the
    development graph runs in it (``developer``, ``tester``, ``pull_request``: the Worker is
    made just before) until the task waits for a person (its Worker is removed before it
    asks) or ends (removed right after); the stage after an answer starts the next stretch (a
    new Worker). A task still at work counts up to now. Left out: the minutes a Worker takes to
    be made, and the PO sessions' Workers (a chat's, not a project's). A stretch over midnight
    counts on each day its part.
    """
    started = and_(
        col(TaskEventRow.type) == EventType.stage_started,
        col(TaskEventRow.stage).in_(WORKER_STAGES),
    )
    ended = or_(
        col(TaskEventRow.status) == TaskStatus.waiting_human,
        col(TaskEventRow.type).in_(list(TERMINAL_EVENTS)),
    )
    query = (
        select(Task.project_id, TaskEventRow.task_id, started, TaskEventRow.created_at)
        .join(Task, col(Task.id) == col(TaskEventRow.task_id))
        .where(
            col(Task.type) == TaskType.engineering,
            or_(col(Task.completed_at).is_(None), col(Task.completed_at) >= window[0]),
            col(Task.created_at) < window[1],
            or_(started, ended),
        )
        .order_by(col(TaskEventRow.task_id), col(TaskEventRow.seq))
    )
    minutes: dict[tuple[str, date], float] = defaultdict(float)
    still = min(now, window[1])  # where a stretch not ended yet ends
    stretches: list[tuple[str, datetime, datetime]] = []
    rows = await session.exec(_of_projects(query, project_ids))
    for (project_id, _), events in groupby(rows, key=lambda row: (row[0], row[1])):
        since: datetime | None = None
        for *_, starts, at in events:
            if starts and since is None:
                since = as_utc(at)
            elif not starts and since is not None:
                stretches.append((project_id, since, as_utc(at)))
                since = None
        if since is not None:
            stretches.append((project_id, since, still))
    for project_id, start, end in stretches:
        for day, seconds in _by_day(max(start, window[0]), min(end, window[1])):
            minutes[project_id, day] += seconds / 60
    return minutes


def _by_day(start: datetime, end: datetime) -> Iterable[tuple[date, float]]:
    """The seconds of [start, end) on each UTC day it touches."""
    while start < end:
        midnight = day_start(start.date() + timedelta(days=1))
        stop = min(end, midnight)
        yield start.date(), (stop - start).total_seconds()
        start = stop


def _as_date(value: Any) -> date:
    # SQLite's date() is text; the column type reads it, except where a driver hands it raw.
    return value if isinstance(value, date) else date.fromisoformat(str(value))


# --- daily budgets -------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetCrossed:
    """A project whose model calls of ``day`` cost more than its daily budget."""

    project_id: str
    project: str
    day: date
    budget_usd: float
    cost_usd: float
    chat_id: int | None  # the project's chat; None: the admins are told


async def crossed_budgets(session: AsyncSession, day: date) -> list[BudgetCrossed]:
    """The projects past their daily budget on ``day`` whose chat was not told of it yet."""
    budgeted = {
        project.id: project
        for project in await session.exec(
            select(Project).where(col(Project.daily_budget_usd).is_not(None))
        )
    }
    if not budgeted:
        return []
    window = (day_start(day), day_start(day + timedelta(days=1)))
    told = set(
        await session.exec(select(BudgetNotice.project_id).where(col(BudgetNotice.day) == day))
    )
    crossed = []
    for project_id, _, values in await _model_calls(session, window, list(budgeted)):
        project = budgeted[project_id]
        budget = float(project.daily_budget_usd or 0.0)
        if values["cost_usd"] > budget and project_id not in told:
            crossed.append(
                BudgetCrossed(
                    project_id=project_id,
                    project=project.name,
                    day=day,
                    budget_usd=budget,
                    cost_usd=values["cost_usd"],
                    chat_id=project.chat_id,
                )
            )
    return sorted(crossed, key=lambda each: each.project)


async def record_budget_notice(
    session: AsyncSession, crossed: BudgetCrossed, chats: list[int]
) -> list[int] | None:
    """The day's notice and a note to each of ``chats`` (through the outbox), in one
    transaction; commits. Returns the notes' outbox ids to publish, or None when the day was
    told already (another run wrote it first)."""
    session.add(
        BudgetNotice(
            project_id=crossed.project_id,
            day=crossed.day,
            budget_usd=crossed.budget_usd,
            cost_usd=crossed.cost_usd,
        )
    )
    notes = [
        outbox.enqueue(
            session,
            chat_stream(chat),
            encode_chat_entry(
                ChatNote(
                    chat_id=chat,
                    note_id=f"budget-{crossed.project_id}-{crossed.day.isoformat()}",
                    text=budget_note_text(crossed),
                    source=NOTE_SOURCE,
                )
            ),
        )
        for chat in dict.fromkeys(chats)
    ]
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        return None
    log.info(
        "daily budget crossed",
        project=crossed.project,
        day=crossed.day.isoformat(),
        cost_usd=crossed.cost_usd,
        budget_usd=crossed.budget_usd,
    )
    return [note.id for note in notes if note.id is not None]


def budget_note_text(crossed: BudgetCrossed) -> str:
    """The chat's note of a crossed budget (Markdown)."""
    return (
        f"💸 **Budget**: the model calls of project {crossed.project} cost "
        f"${crossed.cost_usd:.2f} today ({crossed.day.isoformat()}, UTC), past its daily "
        f"budget of ${crossed.budget_usd:.2f}. Its tasks go on; nothing is stopped.\n\n"
        f"`orchestrator usage --project {crossed.project} --since {crossed.day.isoformat()}`"
    )
