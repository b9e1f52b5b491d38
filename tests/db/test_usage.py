"""What the projects used per UTC day, on both databases: model calls summed from the ledger as
``TaskUsage`` sums a task's, Worker minutes from the tasks' events, deploys by outcome; daily
budgets found crossed and told once per day."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlmodel import col, select

from activities.development import DEVELOPER, PULL_REQUEST, TESTER
from core.contracts.agents import TaskUsage
from core.enums import EventType, TaskStatus, TaskType
from core.ids import chat_stream
from db.engine import Database
from db.tables import ModelUsage, OutboxMessage, Project, Task, TaskEventRow, User
from db.usage import (
    WORKER_STAGES,
    Totals,
    crossed_budgets,
    record_budget_notice,
    usage_report,
)

DAY1, DAY2 = date(2026, 3, 1), date(2026, 3, 2)
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


class Rows:
    """Projects, tasks, events and ledger rows written as the services write them, at the
    times a test chooses."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.user_id = ""

    async def projects(self, *names: str, budgets: dict[str, float] | None = None) -> list[str]:
        async with self.db.session() as session:
            user = User(name="ada")
            session.add(user)
            await session.flush()
            self.user_id = user.id
            made = [
                Project(
                    name=name,
                    owner_id=user.id,
                    daily_budget_usd=(budgets or {}).get(name),
                    chat_id=100 + index,
                )
                for index, name in enumerate(names)
            ]
            session.add_all(made)
            await session.commit()
        return [project.id for project in made]

    async def task(
        self,
        project_id: str,
        type: TaskType = TaskType.engineering,
        status: TaskStatus = TaskStatus.completed,
        created: datetime = at(DAY1, 0),
        completed: datetime | None = None,
    ) -> str:
        async with self.db.session() as session:
            task = Task(
                type=type,
                project_id=project_id,
                user_id=self.user_id,
                status=status,
                workflow_id="w",
                created_at=created,
                completed_at=completed,
            )
            session.add(task)
            await session.commit()
        return task.id

    async def events(self, task_id: str, *events: tuple[datetime, EventType, str | None]) -> None:
        """``(when, type, stage)``; a ``waiting`` stage is the task moving to WAITING_HUMAN."""
        async with self.db.session() as session:
            for seq, (when, type, stage) in enumerate(events, start=1):
                waiting = stage == "waiting"
                session.add(
                    TaskEventRow(
                        task_id=task_id,
                        seq=seq,
                        type=type,
                        status=TaskStatus.waiting_human if waiting else TaskStatus.running,
                        stage=None if waiting else stage,
                        created_at=when,
                    )
                )
            await session.commit()

    async def calls(self, *rows: ModelUsage) -> None:
        async with self.db.session() as session:
            session.add_all(rows)
            await session.commit()


def call(task_id: str, when: datetime, **values: object) -> ModelUsage:
    return ModelUsage(task_id=task_id, provider="anthropic", created_at=when, **values)  # type: ignore[arg-type]


def ledger_totals(rows: list[ModelUsage]) -> TaskUsage:
    """The rows summed as the gateway sums a task's (``TaskUsage.add``)."""
    usage = TaskUsage(task_id="all")
    for row in rows:
        usage.add(row)
    return usage


def same_model_figures(totals: Totals, ledger: TaskUsage) -> None:
    assert (
        totals.calls,
        totals.refused_calls,
        totals.tokens_in,
        totals.tokens_out,
        totals.cache_read_tokens,
        totals.cache_write_tokens,
        totals.unpriced_calls,
    ) == (
        ledger.calls,
        ledger.refusals,
        ledger.tokens_in,
        ledger.tokens_out,
        ledger.cache_read_tokens,
        ledger.cache_write_tokens,
        ledger.unpriced_calls,
    )
    assert totals.cost_usd == pytest.approx(ledger.cost_usd, abs=1e-9)


async def test_model_calls_per_project_and_day_are_their_tasks_ledgers_summed(
    database: Database,
) -> None:
    rows = Rows(database)
    shop, blog = await rows.projects("shop", "blog")
    first, second, other = [await rows.task(p) for p in (shop, shop, blog)]
    day1 = [
        call(first, at(DAY1, 9), tokens_in=100, tokens_out=50, cache_read_tokens=10, cost_usd=0.01),
        call(
            first,
            at(DAY1, 23, 59),
            tokens_in=80,
            tokens_out=40,
            cache_write_tokens=5,
            cost_usd=0.02,
        ),
        call(first, at(DAY1, 23, 59), refused=True, error="task budget exhausted"),
    ]
    day2 = [
        call(first, at(DAY2, 0, 1), tokens_in=7, tokens_out=3),  # a model without a price
        call(first, at(DAY2, 1), status_code=500, error="overloaded"),  # failed upstream
        call(second, at(DAY2, 2), tokens_in=1000, tokens_out=10, cost_usd=0.5),
    ]
    blogs = [call(other, at(DAY1, 5), tokens_in=9, tokens_out=9, cost_usd=0.2)]
    before = [call(first, at(DAY1, 0) - timedelta(seconds=1), tokens_in=1, cost_usd=9.0)]
    po_session = [call("po-4242", at(DAY1, 6), tokens_in=5, tokens_out=5, cost_usd=1.0)]
    await rows.calls(*day1, *day2, *blogs, *before, *po_session)

    async with database.session() as session:
        report = await usage_report(session, DAY1, now=NOW)

    assert (report.since, report.until) == (DAY1, DAY2)
    assert sorted(report.days[shop]) == [DAY1, DAY2]
    same_model_figures(report.days[shop][DAY1], ledger_totals(day1))
    same_model_figures(report.days[shop][DAY2], ledger_totals(day2))
    same_model_figures(report.projects[shop], ledger_totals(day1 + day2))
    same_model_figures(report.projects[blog], ledger_totals(blogs))
    same_model_figures(report.total, ledger_totals(day1 + day2 + blogs))
    assert (
        report.days[shop][DAY2].unpriced_calls == 1 and report.days[shop][DAY1].refused_calls == 1
    )

    async with database.session() as session:
        only_blog = await usage_report(session, DAY1, project_ids=[blog], now=NOW)
        from_day2 = await usage_report(session, DAY2, now=NOW)
    assert list(only_blog.projects) == [blog]
    same_model_figures(only_blog.total, ledger_totals(blogs))
    assert list(from_day2.projects) == [shop]
    same_model_figures(from_day2.total, ledger_totals(day2))


async def test_worker_minutes_count_the_stretches_a_task_had_its_worker(database: Database) -> None:
    rows = Rows(database)
    shop, blog = await rows.projects("shop", "blog")
    asked = await rows.task(shop, completed=at(DAY1, 11, 10))
    await rows.events(
        asked,
        (at(DAY1, 10), EventType.started, None),
        (at(DAY1, 10, 1), EventType.stage_started, "scaffold"),  # no Worker yet
        (at(DAY1, 10, 5), EventType.stage_started, DEVELOPER),  # its Worker from here
        (at(DAY1, 10, 10), EventType.progress, DEVELOPER),
        (at(DAY1, 10, 20), EventType.stage_started, TESTER),
        (at(DAY1, 10, 30), EventType.progress, "waiting"),  # removed before it asked: 25 min
        (at(DAY1, 11), EventType.stage_started, DEVELOPER),  # a new Worker with the answer
        (at(DAY1, 11, 5), EventType.stage_started, PULL_REQUEST),
        (at(DAY1, 11, 10), EventType.completed, None),  # 10 min more
    )
    overnight = await rows.task(shop, status=TaskStatus.failed, completed=at(DAY2, 0, 20))
    await rows.events(
        overnight,
        (at(DAY1, 23, 50), EventType.stage_started, DEVELOPER),
        (at(DAY2, 0, 20), EventType.failed, None),
    )
    running = await rows.task(blog, status=TaskStatus.running)
    await rows.events(running, (at(DAY2, 11), EventType.stage_started, DEVELOPER))
    earlier = await rows.task(blog, created=at(DAY1, 0) - timedelta(days=2), completed=at(DAY1, 0))
    await rows.events(
        earlier,
        (at(DAY1, 0) - timedelta(hours=1), EventType.stage_started, DEVELOPER),
        (at(DAY1, 0) - timedelta(seconds=1), EventType.completed, None),
    )

    async with database.session() as session:
        report = await usage_report(session, DAY1, now=NOW)

    assert report.days[shop][DAY1].worker_minutes == 25 + 10 + 10
    assert report.days[shop][DAY2].worker_minutes == 20
    assert report.days[blog] == {DAY2: Totals(worker_minutes=60)}  # still at work: up to now
    assert report.total.worker_minutes == 25 + 10 + 10 + 20 + 60
    assert set(WORKER_STAGES) == {DEVELOPER, TESTER, PULL_REQUEST}


async def test_deploys_count_by_the_day_asked_and_their_outcome(database: Database) -> None:
    rows = Rows(database)
    shop, blog = await rows.projects("shop", "blog")
    for status in (TaskStatus.completed, TaskStatus.failed, TaskStatus.running):
        await rows.task(shop, TaskType.deploy, status, created=at(DAY2, 8))
    await rows.task(blog, TaskType.deploy, TaskStatus.cancelled, created=at(DAY1, 8))
    await rows.task(blog, TaskType.deploy, created=at(DAY1, 0) - timedelta(minutes=1))

    async with database.session() as session:
        report = await usage_report(session, DAY1, now=NOW)

    assert report.days[shop] == {DAY2: Totals(deploys=3, deploys_succeeded=1, deploys_failed=1)}
    assert report.days[blog] == {DAY1: Totals(deploys=1)}
    assert (report.total.deploys, report.total.deploys_succeeded) == (4, 1)


async def test_a_crossed_budget_is_found_and_told_once_per_day(database: Database) -> None:
    rows = Rows(database)
    shop, blog, docs = await rows.projects(
        "shop", "blog", "docs", budgets={"shop": 0.025, "blog": 1.0}
    )
    tasks = {project: await rows.task(project) for project in (shop, blog, docs)}
    await rows.calls(
        call(tasks[shop], at(DAY1, 9), tokens_in=1, cost_usd=0.02),
        call(tasks[shop], at(DAY1, 10), tokens_in=1, cost_usd=0.01),  # past 0.025 now
        call(tasks[shop], at(DAY2, 9), tokens_in=1, cost_usd=0.02),  # not past on day 2
        call(tasks[blog], at(DAY1, 9), tokens_in=1, cost_usd=0.9),  # under its budget
        call(tasks[docs], at(DAY1, 9), tokens_in=1, cost_usd=50.0),  # no budget
    )
    async with database.session() as session:
        [crossed] = await crossed_budgets(session, DAY1)
        assert await crossed_budgets(session, DAY2) == []
    assert (crossed.project, crossed.day, crossed.budget_usd, crossed.chat_id) == (
        "shop",
        DAY1,
        0.025,
        100,
    )
    assert crossed.cost_usd == pytest.approx(0.03)

    async with database.session() as session:
        notes = await record_budget_notice(session, crossed, [100, 7, 100])
    assert notes is not None and len(notes) == 2
    async with database.session() as session:
        assert await crossed_budgets(session, DAY1) == []  # told: not found again
        assert await record_budget_notice(session, crossed, [100]) is None  # a racing run
        written = (await session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id)))).all()
    assert [row.stream for row in written] == [chat_stream(100), chat_stream(7)]
    assert all(f"budget-{shop}-2026-03-01" in row.fields["data"] for row in written)
