"""DeployWorkflow: one deploy task (``deploy-{task_id}``), from QUEUED to a terminal status.

One deploy at a time per project: the run first takes the project's deploy lock (others wait,
and their events say so). Then, by the task's action:

- create / redeploy / rollback: the DevOps graph (workflows/devops.py). Missing secrets move the
  task to WAITING_HUMAN naming them, for as long as it takes; setting one (the API signals
  ``secrets_changed``) or answering the task (``respond``) makes it look again. A rollback runs
  the same graph with the earlier release's id and commit.
- stop / undeploy: the stop (or undeploy) playbook on every server the project holds a port on.

A release that fails leaves the serving one serving; the task says why.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, FailureError, is_cancelled_exception

from workflows import task_steps
from workflows.scaffold import DB_RETRY, describe_failure

with workflow.unsafe.imports_passed_through():
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.types import Command
    from temporalio.langgraph import graph as langgraph_graph

    from activities.deploy import (
        SECRETS,
        DeployActivities,
        DeployPlan,
        DevOpsState,
        FailureInput,
        LockInput,
        StoppedInput,
    )
    from activities.releases import ReleaseActivities, StopAppInput
    from activities.tasks import (
        QuestionInput,
        StartTaskResult,
        TaskActivities,
    )
    from core.contracts.deploy import DEPLOY_SECRETS_CHANGED, DeployAction, DeployResult
    from core.contracts.engineering import ENGINEERING_QUESTION, ENGINEERING_RESPOND, HumanAnswer
    from core.contracts.events import EventType, TaskStatus
    from workflows.devops import DEVOPS_GRAPH
    from workflows.io import DEPLOY_WORKFLOW, DeployInput, DeployOutput

QUICK = timedelta(seconds=30)
QUICK_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10), maximum_attempts=10)
# Waiting for the project's other deploy may take as long as that deploy waits for secrets.
LOCK_TIMEOUT = timedelta(days=30)
STOP_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30), maximum_attempts=5)
STOP_STAGE = "stop"


class DeployFailed(ApplicationError):
    def __init__(self, message: str) -> None:
        super().__init__(message, type="DeployFailed", non_retryable=True)


@workflow.defn(name=DEPLOY_WORKFLOW)
class DeployWorkflow:
    def __init__(self) -> None:
        self._task_id = ""
        self._question: str | None = None
        self._nudged = False

    @workflow.run
    async def run(self, request: DeployInput) -> DeployOutput:
        self._task_id = request.task_id
        lock: LockInput | None = None
        try:
            started = await self._start()
            if not started.should_run:
                return DeployOutput(task_id=request.task_id, status=started.status)
            lock = LockInput(
                project_id=request.project_id,
                task_id=request.task_id,
                workflow_id=workflow.info().workflow_id,
            )
            await self._take_lock(lock)
            # Planned once the lock is ours: a rollback reads what serves after the deploy before.
            plan = await workflow.execute_activity_method(
                DeployActivities.plan_deploy,
                request.task_id,
                start_to_close_timeout=QUICK,
                retry_policy=DB_RETRY,
                summary="Read what the deploy does",
            )
            if plan.action in (DeployAction.stop, DeployAction.undeploy):
                result, message = await self._stop(plan)
            else:
                result = await self._deploy(plan, request)
                message = _done_message(plan, result)
            await self._finish(TaskStatus.completed, message, result=result.model_dump(mode="json"))
        except (asyncio.CancelledError, FailureError) as error:
            if is_cancelled_exception(error):
                await self._record_failure("the deploy was cancelled")
                await self._finish(TaskStatus.cancelled, "The deploy was cancelled")
                raise
            reason = describe_failure(error)
            await self._record_failure(reason)
            await self._finish(TaskStatus.failed, f"The deploy failed: {reason}", error=reason)
            raise ApplicationError(reason, type="DeployFailed", non_retryable=True) from error
        finally:
            if lock is not None:
                await self._release_lock(lock)
        return DeployOutput(task_id=request.task_id, status=TaskStatus.completed, result=result)

    # --- create / redeploy / rollback: the DevOps graph ---------------------------------------

    async def _deploy(self, plan: DeployPlan, request: DeployInput) -> DeployResult:
        if plan.replaces:
            await self._event(
                EventType.progress,
                f"Rolling back from release {plan.replaces} to release {plan.release}",
            )
        state: DevOpsState = {
            "task_id": plan.task_id,
            "project_id": plan.project_id,
            "project_name": plan.project_name,
            "repo_full_name": plan.repo_full_name or "",
            "repository": plan.repository or "",
            "modules": plan.modules,
            "action": plan.action.value,
            "ref": plan.ref,
            "release": plan.release,
            "request_id": f"{plan.task_id}-{plan.release}",
            "correlation_id": request.correlation_id,
            "commit_sha": plan.commit_sha,
        }
        final = await self._run_graph(state)
        if final.get("failure"):
            raise DeployFailed(str(final["failure"]))
        placement = final.get("placement") or {}
        deployed = final.get("deployed") or {}
        return DeployResult(
            deployed_url=final.get("url"),
            server_ip=placement.get("server_ip"),
            port=placement.get("port"),
            action=plan.action,
            server=placement.get("server"),
            release=plan.release,
            previous_release=deployed.get("previous_release"),
            commit_sha=final.get("commit_sha"),
            deployment_id=placement.get("deployment_id"),
            playbook_s=deployed.get("playbook_s"),
        )

    async def _run_graph(self, state: DevOpsState) -> dict[str, Any]:
        """Run the graph; each interrupt names the secrets the task waits for."""
        app = langgraph_graph(DEVOPS_GRAPH).compile(checkpointer=InMemorySaver())
        config: Any = {"configurable": {"thread_id": self._task_id}, "recursion_limit": 200}
        result: dict[str, Any] = await app.ainvoke(state, config)
        while result.get("__interrupt__"):
            missing = list(result["__interrupt__"][0].value["missing"])
            await self._wait_for_secrets(state["project_name"], missing)
            result = await app.ainvoke(Command(resume={"looked_again": True}), config)
        return result

    async def _wait_for_secrets(self, project: str, missing: list[str]) -> None:
        names = ", ".join(missing)
        question = (
            f"The app needs secrets {project} does not have: {names}. Set each with "
            f"`orchestrator secret set --project {project} NAME`; the deploy goes on by itself "
            "once they are all there."
        )
        change = QuestionInput(task_id=self._task_id, question=question, stage=SECRETS)
        self._question, self._nudged = question, False
        await workflow.execute_activity_method(
            TaskActivities.wait_for_human,
            change,
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
            summary=f"Mark the task WAITING_HUMAN for {names}",
        )
        # Days are fine: nothing is held while the run waits.
        await workflow.wait_condition(lambda: self._nudged)
        self._question = None
        await workflow.execute_activity_method(
            TaskActivities.answered,
            change,
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
            summary="Mark the task RUNNING again",
        )

    @workflow.signal(name=DEPLOY_SECRETS_CHANGED)
    def secrets_changed(self) -> None:
        """The project's secrets changed: if the run waits for some, it looks again."""
        if self._question is not None:
            self._nudged = True

    @workflow.update(name=ENGINEERING_RESPOND)
    async def respond(self, answer: HumanAnswer) -> str:
        """A person's answer to the waiting task: look at the secrets again."""
        question = self._question or ""
        self._nudged = True
        return question

    @respond.validator
    def _validate_respond(self, answer: HumanAnswer) -> None:
        if self._question is None or self._nudged:
            raise ValueError(f"task {self._task_id} is not waiting for an answer")

    @workflow.query(name=ENGINEERING_QUESTION)
    def question(self) -> str | None:
        return self._question

    # --- stop / undeploy ------------------------------------------------------------------------

    async def _stop(self, plan: DeployPlan) -> tuple[DeployResult, str]:
        undeploy = plan.action is DeployAction.undeploy
        verb = "Undeploying" if undeploy else "Stopping"
        apps = await workflow.execute_activity_method(
            DeployActivities.apps_of_project,
            plan.project_id,
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
            summary="Where the project runs",
        )
        for app in apps:
            await self._event(
                EventType.stage_started, f"{verb} {app.app_name} on {app.server_handle}", STOP_STAGE
            )
            await workflow.execute_activity_method(
                ReleaseActivities.stop_app,
                StopAppInput(
                    server_handle=app.server_handle, app_name=app.app_name, remove=undeploy
                ),
                start_to_close_timeout=timedelta(minutes=15),
                heartbeat_timeout=timedelta(seconds=10),
                retry_policy=STOP_RETRY,
                summary=f"{verb} on {app.server_handle}",
            )
        stopped = await workflow.execute_activity_method(
            DeployActivities.record_stopped,
            StoppedInput(project_id=plan.project_id, undeploy=undeploy),
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
            summary="Record the releases stopped",
        )
        where = ", ".join(app.server_handle for app in apps)
        if not apps:
            message = f"{plan.project_name} is deployed nowhere: nothing to {plan.action.value}"
        elif undeploy:
            message = f"{plan.project_name} is undeployed from {where}; its port is free"
        else:
            message = f"{plan.project_name} is stopped on {where} ({stopped} release(s))"
        return DeployResult(action=plan.action, server=where or None), message

    # --- the task and the lock --------------------------------------------------------------------

    async def _take_lock(self, lock: LockInput) -> None:
        await workflow.execute_activity_method(
            DeployActivities.acquire_deploy_lock,
            lock,
            start_to_close_timeout=LOCK_TIMEOUT,
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=QUICK_RETRY,
            summary="Wait for the project's other deploys",
        )

    async def _release_lock(self, lock: LockInput) -> None:
        try:
            await workflow.execute_activity_method(
                DeployActivities.release_deploy_lock,
                lock,
                start_to_close_timeout=QUICK,
                retry_policy=QUICK_RETRY,
                summary="Let the project's next deploy go",
            )
        except FailureError as failure:  # the next deploy takes it back once this run closed
            workflow.logger.warning("lock not released: %s", describe_failure(failure))

    async def _record_failure(self, reason: str) -> None:
        try:
            await workflow.execute_activity_method(
                DeployActivities.record_deploy_failure,
                FailureInput(task_id=self._task_id, error=reason),
                start_to_close_timeout=QUICK,
                retry_policy=DB_RETRY,
                summary="Mark the release FAILED",
            )
        except FailureError as failure:
            workflow.logger.warning("release not marked failed: %s", describe_failure(failure))

    async def _start(self) -> StartTaskResult:
        return await task_steps.start_task(self._task_id)

    async def _event(self, type: EventType, message: str, stage: str | None = None) -> None:
        await task_steps.record_event(self._task_id, type, message, stage=stage)

    async def _finish(
        self,
        status: TaskStatus,
        message: str,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        await task_steps.finish_task(self._task_id, status, message, result=result, error=error)


def _done_message(plan: DeployPlan, result: DeployResult) -> str:
    where = f"{result.server}, port {result.port}"
    if plan.action is DeployAction.rollback:
        return f"Rolled back to release {plan.release}: {result.deployed_url} ({where})"
    return f"{plan.project_name} release {plan.release} is live at {result.deployed_url} ({where})"
