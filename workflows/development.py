"""The development graph: Developer -> Tester -> (back with the failures) -> pull request.

A LangGraph ``StateGraph`` run by ``EngineeringWorkflow`` through temporalio-langgraph. The
developer, tester and propose nodes are activities (activities/development.py); the ``budget``
gate and ``ask_human`` run in the workflow, so they stay deterministic:

    START -> budget -> developer -> tester -> propose -> END
               ^          |  \\         |
               |          |   ask_human (interrupt: the task waits for a person's answer)
               |          |        |
               +----------+--------+  (failing tests, an answer: back to the budget gate)

``budget`` checks the task's limits before each agent turn: rounds (test runs), wall time
(``deadline``; waiting for a person does not count) and model tokens / cost as the gateway
counted them. A node that sets ``failure`` ends the graph; the workflow turns it into FAILED.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt
from temporalio import workflow

from activities.development import (
    TEST_TIMEOUT_S,
    TURN_TIMEOUT_S,
    DevelopmentNodes,
    DevelopmentState,
)
from activities.gateway import GatewayActivities
from core.contracts.agents import Budget, uses_model
from core.task_queues import containers_queue
from workflows.policies import (
    GIT_TIMEOUT,
    IN_WORKFLOW,
    NODE_MARGIN,
    QUICK,
    QUICK_RETRY,
    TURN_HEARTBEAT,
    TURN_RETRY,
    in_activity,
)

DEVELOPMENT_GRAPH = "engineering-development"


async def budget(state: DevelopmentState) -> dict[str, Any]:
    """Stop before an agent turn the task may not have (runs in the workflow)."""
    if state["rounds"] >= state["max_rounds"]:
        report = state.get("report") or {}
        summary = f": {report['summary']}" if report.get("summary") else ""
        return {
            "failure": f"the tests still fail after {state['rounds']} round(s), the task's "
            f"limit{summary}"
        }
    if workflow.now() >= datetime.fromisoformat(state["deadline"]):
        return {"failure": "the task ran past its wall-time limit before the tests passed"}
    limits = Budget.model_validate(state["budget"])
    if uses_model(state["agent"]) and (limits.max_tokens or limits.max_cost_usd):
        usage = await workflow.execute_activity_method(
            GatewayActivities.gateway_usage,
            state["task_id"],
            start_to_close_timeout=QUICK,
            retry_policy=QUICK_RETRY,
            summary="Model usage so far",
        )
        spent = limits.exhausted(usage)
        if spent:
            return {"failure": spent}
    return {}


async def ask_human(state: DevelopmentState) -> dict[str, Any]:
    """Interrupt the graph with the agent's question; the workflow resumes it with the answer."""
    question = state.get("question") or "The agent asked no question."
    answer: dict[str, Any] = interrupt({"question": question})
    deadline = datetime.fromisoformat(state["deadline"]) + timedelta(seconds=answer["waited_s"])
    return {
        "question": None,
        "deadline": deadline.isoformat(),
        "feedback": f"You asked: {question}\nThe answer: {answer['answer']}",
    }


# Routers are coroutines: LangGraph runs a plain function in a thread pool, which a workflow lacks.
async def after_budget(state: DevelopmentState) -> str:
    return END if state.get("failure") else "developer"


async def after_developer(state: DevelopmentState) -> str:
    if state.get("failure"):
        return END
    return "ask_human" if state.get("question") else "tester"


async def after_tester(state: DevelopmentState) -> str:
    report = state.get("report") or {}
    return "propose" if report.get("passed") else "budget"


def build_development_graph(
    nodes: DevelopmentNodes, task_queue: str
) -> StateGraph[Any, Any, Any, Any]:
    """The graph for ``LangGraphPlugin(graphs={DEVELOPMENT_GRAPH: ...})``: made once per worker
    (the plugin turns its activity nodes into that worker's activities) for the workflows of
    ``task_queue``. Its activity nodes work in the task's Worker or its workspace: they run on
    the containers queue beside it (a node's options are fixed when the graph is made)."""
    on_containers = containers_queue(task_queue)

    def in_worker(summary: str, timeout_s: float) -> dict[str, Any]:
        """A command in the task's Worker: played again after a crash, heartbeating."""
        return in_activity(
            summary,
            timedelta(seconds=timeout_s) + NODE_MARGIN,
            retry=TURN_RETRY,
            heartbeat=TURN_HEARTBEAT,
            task_queue=on_containers,
        )

    graph: StateGraph[Any, Any, Any, Any] = StateGraph(DevelopmentState)
    graph.add_node("budget", budget, metadata=IN_WORKFLOW)
    graph.add_node(
        "developer", nodes.developer, metadata=in_worker("Developer: an agent turn", TURN_TIMEOUT_S)
    )
    graph.add_node("ask_human", ask_human, metadata=IN_WORKFLOW)
    graph.add_node("tester", nodes.tester, metadata=in_worker("Tester: make test", TEST_TIMEOUT_S))
    graph.add_node(
        "propose",
        nodes.propose,
        metadata=in_activity("Commit, push, pull request", GIT_TIMEOUT, task_queue=on_containers),
    )
    graph.add_edge(START, "budget")
    graph.add_conditional_edges("budget", after_budget, ["developer", END])
    graph.add_conditional_edges("developer", after_developer, ["ask_human", "tester", END])
    graph.add_edge("ask_human", "budget")
    graph.add_conditional_edges("tester", after_tester, ["propose", "budget"])
    graph.add_edge("propose", END)
    return graph
