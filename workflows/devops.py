"""The DevOps graph: EnvAnalyzer -> SecretResolver -> Deployer -> Ansible -> health -> record.

A LangGraph ``StateGraph`` run by ``DeployWorkflow`` through temporalio-langgraph. The analyze,
deployer, ansible, released, health and record nodes are activities (activities/devops.py);
``secrets`` and ``ansible_wait`` run in the workflow, so their waits cost nothing:

    START -> analyze -> secrets -> deployer -> ansible -> ansible_wait -> released -> health
                         ^  |          ^                                     |          |
                         +--+          +-------------------------------------+       record -> END
            (missing secrets: interrupt; the task waits for them, then looks again)
            (ansible_wait: interrupt; the workflow waits for the Ansible run's signal)
            (released -> deployer: the port was taken on the server, another port)

Runs from before ``ansible_wait`` waited for the run inside the ``ansible`` activity: their node
returns the result itself and goes on from there as ``released`` would.

A node that sets ``failure`` ends the graph; the workflow turns it into FAILED and the serving
release, if any, serves on.
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt
from temporalio import workflow

from activities.deploy import DeployActivities, SecretsInput
from activities.devops import DevOpsNodes, DevOpsState
from workflows.policies import (
    ANALYZE_TIMEOUT,
    DEVOPS_RETRY,
    HEALTH_TIMEOUT,
    IN_WORKFLOW,
    NODE_HEARTBEAT,
    PLACE_TIMEOUT,
    QUICK,
    QUICK_RETRY,
    in_activity,
)

DEVOPS_GRAPH = "devops"


async def resolve_secrets(state: DevOpsState) -> dict[str, Any]:
    """SecretResolver: stop until the project has every secret the app requires (in the
    workflow: the wait may last days)."""
    spec = state.get("spec") or {}
    missing = await workflow.execute_activity_method(
        DeployActivities.missing_secrets,
        SecretsInput(project_id=state["project_id"], names=spec.get("required_env") or []),
        start_to_close_timeout=QUICK,
        retry_policy=QUICK_RETRY,
        summary="Which secrets are missing",
    )
    if missing:
        # Resumed when a secret is set (or a person answers): the router sends us round again.
        interrupt({"missing": missing})
    return {"missing": missing}


async def wait_for_ansible(state: DevOpsState) -> dict[str, Any]:
    """The Ansible run's result: the graph stops (an interrupt) and the workflow resumes it with
    the result its run signals (in workflow code: the playbook may take many minutes)."""
    result = interrupt({"ansible": state.get("ansible_request")})
    return {"deployed": result}


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
    if state.get("deployed") is None:
        return "ansible_wait"
    return await after_released(state)  # a run from before: its node waited and said how it went


async def after_released(state: DevOpsState) -> str:
    if state.get("failure"):
        return END
    return "deployer" if state.get("placement") is None else "health"


async def after_health(state: DevOpsState) -> str:
    return END if state.get("failure") else "record"


def build_devops_graph(nodes: DevOpsNodes) -> StateGraph[Any, Any, Any, Any]:
    """The graph for ``LangGraphPlugin(graphs={DEVOPS_GRAPH: ...})``, made once per worker."""
    graph: StateGraph[Any, Any, Any, Any] = StateGraph(DevOpsState)
    graph.add_node(
        "analyze",
        nodes.analyze,
        metadata=in_activity(
            "EnvAnalyzer: how the app runs",
            ANALYZE_TIMEOUT,
            heartbeat=NODE_HEARTBEAT,
        ),
    )
    graph.add_node("secrets", resolve_secrets, metadata=IN_WORKFLOW)
    graph.add_node(
        "deployer",
        nodes.place,
        metadata=in_activity("Deployer: a server and a port", PLACE_TIMEOUT),
    )
    graph.add_node(
        "ansible",
        nodes.release,
        metadata=in_activity("Ansible: hand the release over", PLACE_TIMEOUT, retry=DEVOPS_RETRY),
    )
    graph.add_node("ansible_wait", wait_for_ansible, metadata=IN_WORKFLOW)
    graph.add_node(
        "released",
        nodes.released,
        metadata=in_activity("Ansible: how the release went", PLACE_TIMEOUT),
    )
    graph.add_node(
        "health",
        nodes.health,
        metadata=in_activity(
            "Health check from the orchestrator",
            HEALTH_TIMEOUT,
            heartbeat=NODE_HEARTBEAT,
        ),
    )
    graph.add_node(
        "record", nodes.record, metadata=in_activity("Record the release", PLACE_TIMEOUT)
    )
    graph.add_edge(START, "analyze")
    graph.add_conditional_edges("analyze", after_analyze, ["secrets", END])
    graph.add_conditional_edges("secrets", after_secrets, ["secrets", "deployer"])
    graph.add_conditional_edges("deployer", after_place, ["ansible", END])
    graph.add_conditional_edges(
        "ansible", after_ansible, ["ansible_wait", "deployer", "health", END]
    )
    graph.add_edge("ansible_wait", "released")
    graph.add_conditional_edges("released", after_released, ["deployer", "health", END])
    graph.add_conditional_edges("health", after_health, ["record", END])
    graph.add_edge("record", END)
    return graph
