"""UsageWorkflow: one tick of the usage Schedule (core/schedules.py).

The projects whose model calls of the tick's UTC day cost more than their daily budget
(``projects.daily_budget_usd``) are told so in their chat, else the admins' (one activity,
``UsageActivities.tell_budget_crossings``): once per project and day however many ticks see it,
since the day's notice is recorded with its notes (db/usage.py).
"""

from __future__ import annotations

from temporalio import workflow

from workflows.policies import DB_RETRY, QUICK

with workflow.unsafe.imports_passed_through():
    from activities.health import Tick
    from activities.usage import BudgetCheckInput, BudgetCheckOutput, UsageActivities
    from core.schedules import USAGE


@workflow.defn(name=USAGE.workflow)
class UsageWorkflow:
    @workflow.run
    async def run(self, request: Tick) -> BudgetCheckOutput:
        # The tick's day, not the activity's clock: a retry after midnight weighs the same day.
        day = workflow.now().date()
        return await workflow.execute_activity_method(
            UsageActivities.tell_budget_crossings,
            BudgetCheckInput(day=day),
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
            summary=f"Tell the projects past their daily budget on {day.isoformat()}",
        )
