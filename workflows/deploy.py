"""DeployWorkflow: one deploy task (``deploy-{task_id}``), from QUEUED to a terminal status.

One deploy at a time per project: the run first takes the project's turn to deploy (others wait
in order, in workflow code, and their events say so: workflows/turns.py). Then, by the task's
action:

- create / redeploy / rollback: the DevOps graph (workflows/devops.py). Missing secrets move the
  task to WAITING_HUMAN naming them, for as long as it takes; setting one (the API signals
  ``secrets_changed``) or answering the task (``respond``) makes it look again. The release's
  Ansible run signals its result (``ansible_deploy_ended``), waited for here, in workflow code.
  A rollback runs the same graph with the earlier release's id and commit.
- stop / undeploy: the stop (or undeploy) playbook on every server the project holds a port on.

A release that fails leaves the serving one serving; the task says why.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError, FailureError

from workflows.policies import (
    ANSIBLE_CHECK_INTERVAL,
    ANSIBLE_START_DEADLINE,
    DB_RETRY,
    DEPLOY_LOCK_HEARTBEAT,
    DEPLOY_LOCK_TIMEOUT,
    PLAYBOOK_HEARTBEAT,
    QUICK,
    QUICK_RETRY,
    STOP_RETRY,
    STOP_TIMEOUT,
)
from workflows.toolkit import (
    TURNS_PATCH,
    TakesTurns,
    TaskRun,
    WaitsForPerson,
    describe_failure,
    host_with,
)

with workflow.unsafe.imports_passed_through():
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.types import Command
    from temporalio.langgraph import graph as langgraph_graph

    from activities.deploy import (
        AnsibleOutcome,
        DeployActivities,
        DeployPlan,
        FailureInput,
        LockInput,
        StoppedInput,
    )
    from activities.devops import SECRETS, DevOpsState
    from activities.releases import ReleaseActivities, StopAppInput
    from core.contracts.deploy import (
        ANSIBLE_DEPLOY_ENDED,
        DEPLOY_SECRETS_CHANGED,
        AnsibleDeployResult,
        DeployResult,
    )
    from core.contracts.events import HumanAnswer
    from core.contracts.workflows import DEPLOY_WORKFLOW, DeployInput, DeployOutput, deploy_pool
    from core.enums import DeployAction, EventType, TaskStatus
    from core.task_queues import ANSIBLE
    from workflows.devops import DEVOPS_GRAPH

STOP_STAGE = "stop"
# Runs from before it waited for a person even when the project's secrets changed while the
# graph looked at them (a signal that came before the question was lost).
LOOK_AGAIN_PATCH = "deploy-looks-again-after-a-secrets-change"


class DeployFailed(ApplicationError):
    def __init__(self, message: str) -> None:
        super().__init__(message, type="DeployFailed", non_retryable=True)


@workflow.defn(name=DEPLOY_WORKFLOW)
class DeployWorkflow(WaitsForPerson, TakesTurns):
    def __init__(self) -> None:
        self._task_id = ""
        self._task = TaskRun("", noun="deploy", failure_type="DeployFailed")
        self._lock: LockInput | None = None
        # How often the project's secrets changed (``secrets_changed``), waiting or not.
        self._secrets_changes = 0
        # The Ansible runs that ended, by request id (``ansible_deploy_ended``).
        self._ansible_results: dict[str, AnsibleDeployResult] = {}

    @workflow.run
    async def run(self, request: DeployInput) -> DeployOutput:
        self._task_id = request.task_id
        self._task = TaskRun(request.task_id, noun="deploy", failure_type="DeployFailed")
        result = await self._task.run(
            lambda: self._work(request),
            on_failure=self._record_failure,
            finally_=self._release_lock,
        )
        if result is None:
            return DeployOutput(task_id=request.task_id, status=self._task.status)
        return DeployOutput(task_id=request.task_id, status=TaskStatus.completed, result=result)

    async def _work(self, request: DeployInput) -> tuple[DeployResult, str, dict[str, Any]]:
        lock = LockInput(
            project_id=request.project_id,
            task_id=request.task_id,
            workflow_id=workflow.info().workflow_id,
        )
        self._lock = lock
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
        return result, message, result.model_dump(mode="json")

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
        spec = final.get("spec") or {}
        return DeployResult(
            deployed_url=final.get("url"),
            project=plan.project_name,
            runtime=spec.get("runtime"),
            database=deployed.get("database"),
            server_ip=placement.get("server_ip"),
            # An app that serves no port holds one only as its place on the server.
            port=placement.get("port") if final.get("url") else None,
            action=plan.action,
            server=placement.get("server"),
            release=plan.release,
            previous_release=deployed.get("previous_release"),
            commit_sha=final.get("commit_sha"),
            deployment_id=placement.get("deployment_id"),
            playbook_s=deployed.get("playbook_s"),
            bot=deployed.get("bot"),
        )

    async def _run_graph(self, state: DevOpsState) -> dict[str, Any]:
        """Run the graph; each interrupt names what it waits for: the secrets the task lacks, or
        its Ansible run's result.

        A secret set while the graph looked may be missing from what it saw, and its signal
        came while nothing was asked: then it looks again at once instead of waiting.
        """
        app = langgraph_graph(DEVOPS_GRAPH).compile(checkpointer=InMemorySaver())
        config: Any = {"configurable": {"thread_id": self._task_id}, "recursion_limit": 200}
        seen = self._secrets_changes
        result: dict[str, Any] = await app.ainvoke(state, config)
        while result.get("__interrupt__"):
            asked = result["__interrupt__"][0].value
            if "ansible" in asked:
                ended = await self._ansible_result(asked["ansible"])
                result = await app.ainvoke(Command(resume=ended.model_dump(mode="json")), config)
                continue
            missing = list(asked["missing"])
            changed = self._secrets_changes != seen and workflow.patched(LOOK_AGAIN_PATCH)
            if not changed:
                await self._wait_for_secrets(state["project_name"], missing)
            seen = self._secrets_changes
            result = await app.ainvoke(Command(resume={"looked_again": True}), config)
        return result

    async def _ansible_result(self, request_id: str) -> AnsibleDeployResult:
        """The result the Ansible run signals when it ends, waited for with nothing held.

        Every ANSIBLE_CHECK_INTERVAL without it, one activity asks Temporal how the run is: a
        run that ended without a word (terminated) gives its failure, and one that no bridge
        started within ANSIBLE_START_DEADLINE fails the deploy.
        """
        not_started_for = timedelta(0)
        while True:
            try:
                await workflow.wait_condition(
                    lambda: request_id in self._ansible_results,
                    timeout=ANSIBLE_CHECK_INTERVAL,
                    timeout_summary="Check on the Ansible run",
                )
                return self._ansible_results[request_id]
            except TimeoutError:
                pass
            outcome: AnsibleOutcome = await workflow.execute_activity_method(
                DeployActivities.ansible_outcome,
                request_id,
                start_to_close_timeout=QUICK,
                retry_policy=QUICK_RETRY,
                summary="How is the Ansible run?",
            )
            if outcome.result is not None:
                return outcome.result
            if outcome.started:
                not_started_for = timedelta(0)
            else:
                not_started_for += ANSIBLE_CHECK_INTERVAL
            if not_started_for >= ANSIBLE_START_DEADLINE:
                return AnsibleDeployResult(
                    request_id=request_id,
                    success=False,
                    error=f"no bridge started the Ansible run in {ANSIBLE_START_DEADLINE}: is "
                    "the ansible bridge up? (its message waits on ansible:deploy:queue)",
                )

    @workflow.signal(name=ANSIBLE_DEPLOY_ENDED)
    def ansible_deploy_ended(self, result: AnsibleDeployResult) -> None:
        """The release's Ansible run ended (it may come before the graph asks for it)."""
        self._ansible_results[result.request_id] = result

    async def _wait_for_secrets(self, project: str, missing: list[str]) -> None:
        """Any answer, or a change of the project's secrets, means "look again"; days are fine:
        nothing is held while the run waits."""
        names = ", ".join(missing)
        question = (
            f"The app needs secrets {project} does not have: {names}. Set each with "
            f"`orchestrator secret set --project {project} NAME`; the deploy goes on by itself "
            "once they are all there."
        )
        await self.wait_for_person(
            question, stage=SECRETS, summary=f"Mark the task WAITING_HUMAN for {names}"
        )

    @workflow.signal(name=DEPLOY_SECRETS_CHANGED)
    def secrets_changed(self) -> None:
        """The project's secrets changed: if the run waits for some, it looks again (if it is
        looking, it looks once more)."""
        self._secrets_changes += 1
        self.nudge(HumanAnswer(answer="the project's secrets changed"))

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
                    server_handle=app.server_handle,
                    app_name=app.app_name,
                    remove=undeploy,
                    drop_data=plan.drop_data,
                ),
                task_queue=host_with(ANSIBLE),
                start_to_close_timeout=STOP_TIMEOUT,
                heartbeat_timeout=PLAYBOOK_HEARTBEAT,
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
            data = (
                "its data is dropped"
                if plan.drop_data
                else "its data, if it has a database, stays (`undeploy --drop-data` drops it)"
            )
            message = f"{plan.project_name} is undeployed from {where}; its port is free; {data}"
        else:
            message = f"{plan.project_name} is stopped on {where} ({stopped} release(s))"
        return DeployResult(action=plan.action, server=where or None), message

    # --- the lock and the release record ---------------------------------------------------------

    async def _take_lock(self, lock: LockInput) -> None:
        """The project's one turn to deploy, waited for in workflow code; runs from before
        ``TURNS_PATCH`` waited in an activity (which now lets them go at once)."""
        if workflow.patched(TURNS_PATCH):
            await self.take_turn(deploy_pool(lock.project_id), lock.task_id, task_id=lock.task_id)
            return
        await workflow.execute_activity_method(
            DeployActivities.acquire_deploy_lock,
            lock,
            start_to_close_timeout=DEPLOY_LOCK_TIMEOUT,
            heartbeat_timeout=DEPLOY_LOCK_HEARTBEAT,
            retry_policy=QUICK_RETRY,
            summary="Wait for the project's other deploys",
        )

    async def _release_lock(self) -> None:
        if self._lock is None:
            return
        if workflow.patched(TURNS_PATCH):
            await self.give_back_turn(deploy_pool(self._lock.project_id), self._lock.task_id)
            return
        try:
            await workflow.execute_activity_method(
                DeployActivities.release_deploy_lock,
                self._lock,
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
                FailureInput(task_id=self._task_id, error=reason, cancelled=self._task.cancelling),
                start_to_close_timeout=QUICK,
                retry_policy=DB_RETRY,
                summary="Mark the release FAILED (a failure opens a deploy_failed incident)",
            )
        except FailureError as failure:
            workflow.logger.warning("release not marked failed: %s", describe_failure(failure))

    async def _event(self, type: EventType, message: str, stage: str | None = None) -> None:
        await self._task.event(type, message, stage=stage)


def _done_message(plan: DeployPlan, result: DeployResult) -> str:
    where = f"{result.server}, port {result.port}"
    if plan.action is DeployAction.rollback:
        return f"Rolled back to release {plan.release}: {result.deployed_url} ({where})"
    return f"{plan.project_name} release {plan.release} is live at {result.deployed_url} ({where})"
