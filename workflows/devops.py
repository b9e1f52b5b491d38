"""The DevOps graph: EnvAnalyzer -> SecretResolver -> Deployer -> Ansible -> health -> record.

A LangGraph ``StateGraph`` run by ``DeployWorkflow`` through temporalio-langgraph. The analyze,
deployer, ansible, health and record nodes are activities (activities/deploy.py); ``secrets``
runs in the workflow, so its wait stays deterministic:

    START -> analyze -> secrets -> deployer -> ansible -> health -> record -> END
                         ^  |          ^          |
                         +--+          +----------+  (the port was taken: another port)
            (missing secrets: interrupt; the task waits for them, then looks again)

A node that sets ``failure`` ends the graph; the workflow turns it into FAILED and the serving
release, if any, serves on.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt
from temporalio import workflow
from temporalio.common import RetryPolicy

from activities.deploy import DeployActivities, DevOpsState, SecretsInput

DEVOPS_GRAPH = "devops"
QUICK_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10), maximum_attempts=10)
# The playbook of a killed worker is played again (its heartbeat stops), not forever.
RUN_RETRY = RetryPolicy(
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=5,
    non_retryable_error_types=["DeployFailed", "TaskNotFound", "ProjectNotFound"],
)


async def resolve_secrets(state: DevOpsState) -> dict[str, Any]:
    """SecretResolver: stop until the project has every secret the app requires (in the
    workflow: the wait may last days)."""
    spec = state.get("spec") or {}
    missing = await workflow.execute_activity_method(
        DeployActivities.missing_secrets,
        SecretsInput(project_id=state["project_id"], names=spec.get("required_env") or []),
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=QUICK_RETRY,
        summary="Which secrets are missing",
    )
    if missing:
        # Resumed when a secret is set (or a person answers): the router sends us round again.
        interrupt({"missing": missing})
    return {"missing": missing}


# Routers are coroutines: LangGraph runs a plain function in a thread pool, which a workflow lacks.
async def after_analyze(state: DevOpsState) -> str:
    return END if state.get("failure") else "secrets"


async def after_secrets(state: DevOpsState) -> str:
    return "secrets" if state.get("missing") else "deployer"


async def after_place(state: DevOpsState) -> str:
    return END if state.get("failure") else "ansible"


async def after_ansible(state: DevOpsState) -> str:
    if state.get("failure"):
        return END
    return "deployer" if state.get("placement") is None else "health"


async def after_health(state: DevOpsState) -> str:
    return END if state.get("failure") else "record"


def _activity(summary: str, timeout: timedelta, **more: Any) -> dict[str, Any]:
    return {
        "execute_in": "activity",
        "start_to_close_timeout": timeout,
        "retry_policy": more.pop("retry_policy", QUICK_RETRY),
        "summary": summary,
        **more,
    }


def build_devops_graph(nodes: DeployActivities) -> StateGraph[Any, Any, Any, Any]:
    """The graph for ``LangGraphPlugin(graphs={DEVOPS_GRAPH: ...})``, made once per worker."""
    graph: StateGraph[Any, Any, Any, Any] = StateGraph(DevOpsState)
    graph.add_node(
        "analyze",
        nodes.analyze,
        metadata=_activity(
            "EnvAnalyzer: how the app runs",
            timedelta(minutes=5),
            heartbeat_timeout=timedelta(seconds=30),
        ),
    )
    graph.add_node("secrets", resolve_secrets, metadata={"execute_in": "workflow"})
    graph.add_node(
        "deployer",
        nodes.place,
        metadata=_activity("Deployer: a server and a port", timedelta(seconds=60)),
    )
    graph.add_node(
        "ansible",
        nodes.release,
        metadata=_activity(
            "Ansible: deploy the release",
            timedelta(minutes=30),
            heartbeat_timeout=timedelta(seconds=10),
            retry_policy=RUN_RETRY,
        ),
    )
    graph.add_node(
        "health",
        nodes.health,
        metadata=_activity(
            "Health check from the orchestrator",
            timedelta(minutes=5),
            heartbeat_timeout=timedelta(seconds=30),
        ),
    )
    graph.add_node(
        "record", nodes.record, metadata=_activity("Record the release", timedelta(seconds=60))
    )
    graph.add_edge(START, "analyze")
    graph.add_conditional_edges("analyze", after_analyze, ["secrets", END])
    graph.add_conditional_edges("secrets", after_secrets, ["secrets", "deployer"])
    graph.add_conditional_edges("deployer", after_place, ["ansible", END])
    graph.add_conditional_edges("ansible", after_ansible, ["deployer", "health", END])
    graph.add_conditional_edges("health", after_health, ["record", END])
    graph.add_edge("record", END)
    return graph
