"""Usage: model calls (the gateway's ledger), Worker minutes and deploys per project and UTC day
(db/usage.py sums them).

Admins see every project; anyone else only the projects they own. Another's project answers 404
as if it were not there.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import date, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BeforeValidator

from api.deps import CurrentUser, DbSession
from api.problems import NotFound, problem_responses
from api.schemas import ProjectUsageRead, UsageDayRead, UsageRead, UsageTotals
from core.contracts.base import utcnow
from db import projects, usage
from db.tables import Project

router = APIRouter(prefix="/usage", tags=["usage"])

# Without ?since: this many UTC days, today the last.
DEFAULT_DAYS = 7


def _iso_day(value: Any) -> Any:
    """Only YYYY-MM-DD, as the schema's ``format: date`` says (not a Unix time, which pydantic
    would also read as a day)."""
    if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("a day is written YYYY-MM-DD")
    return value


Day = Annotated[date, BeforeValidator(_iso_day)]


@router.get(
    "",
    summary="Model calls, tokens and cost, Worker minutes and deploys per project and UTC day "
    "(a non-admin's: those of the projects they own)",
    responses=problem_responses(404),  # the project filter names no project (of theirs)
)
async def get_usage(
    user: CurrentUser,
    session: DbSession,
    project: Annotated[str | None, Query(max_length=100, description="Project id or name")] = None,
    since: Annotated[
        Day | None,
        Query(description=f"The first UTC day counted; default: {DEFAULT_DAYS} days to today"),
    ] = None,
) -> UsageRead:
    today = utcnow().date()
    since = since or today - timedelta(days=DEFAULT_DAYS - 1)
    if project is not None:
        found = await projects.get_project(session, project)
        if not user.is_admin and found.owner_id != user.id:
            raise NotFound(f"project {project!r} not found")
        known = [found]
    else:
        known = [
            each
            for each in await projects.list_projects(session)
            if user.is_admin or each.owner_id == user.id
        ]
    by_id = {each.id: each for each in known}
    everyone = user.is_admin and project is None
    report = await usage.usage_report(
        session, since, until=today, project_ids=None if everyone else list(by_id)
    )
    used = [
        _project_usage(by_id[project_id], totals, report.days[project_id])
        for project_id, totals in report.projects.items()
        if project_id in by_id
    ]
    return UsageRead(
        since=report.since,
        until=report.until,
        total=UsageTotals.model_validate(report.total),
        projects=sorted(used, key=lambda each: each.project.lower()),
    )


def _project_usage(
    project: Project, totals: usage.Totals, days: dict[date, usage.Totals]
) -> ProjectUsageRead:
    budget = project.daily_budget_usd
    return ProjectUsageRead(
        project_id=project.id,
        project=project.name,
        daily_budget_usd=budget,
        days=[
            UsageDayRead(
                day=day,
                over_budget=budget is not None and figures.cost_usd > budget,
                **asdict(figures),
            )
            for day, figures in sorted(days.items())
        ],
        **asdict(totals),
    )
