"""Workflow code changed the way a careless edit would, to prove the replay test notices."""

from __future__ import annotations

from temporalio import workflow

from workflows.engineering import EngineeringWorkflow

with workflow.unsafe.imports_passed_through():
    from core.contracts.engineering import EngineeringResult
    from core.contracts.workflows import ENGINEERING_WORKFLOW, EngineeringInput, EngineeringOutput
    from core.enums import EventType


@workflow.defn(name=ENGINEERING_WORKFLOW)
class EngineeringWithAnExtraEvent(EngineeringWorkflow):
    """One more progress event before the stages, without ``workflow.patched``."""

    @workflow.run
    async def run(self, request: EngineeringInput) -> EngineeringOutput:
        return await super().run(request)

    async def _pipeline(self, request: EngineeringInput) -> EngineeringResult:
        await self._event(EventType.progress, "Planning the work")
        return await super()._pipeline(request)


@workflow.defn(name=ENGINEERING_WORKFLOW)
class EngineeringWithAPatchedEvent(EngineeringWorkflow):
    """The same change done right: old histories replay, new runs get the event."""

    @workflow.run
    async def run(self, request: EngineeringInput) -> EngineeringOutput:
        return await super().run(request)

    async def _pipeline(self, request: EngineeringInput) -> EngineeringResult:
        if workflow.patched("planning-event"):
            await self._event(EventType.progress, "Planning the work")
        return await super()._pipeline(request)
