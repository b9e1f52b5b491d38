"""``orchestrator usage`` against a real API process: the tasks' model calls go through the real
gateway (its task sockets, forwarding to the model API's stand-in, writing its ledger), and the
totals the command shows per project are the gateway ledger's of the same tasks: calls, refused
calls, tokens and cost; with --project, --since, --json and the table, and a day past the
budget `project update --daily-budget` sets."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from core.contracts.agents import Budget, TaskUsage
from core.contracts.base import utcnow
from db.engine import Database
from db.usage import load_usage
from gateway import socket_path_for
from testing.standins.model_upstream import ANTHROPIC_MODEL, OPENAI_MODEL, Upstream
from testing.standins.server import serve
from tests.cli.conftest import Api, Cli
from tests.gateway.conftest import make_gateway, uds_client

ANTHROPIC_CALL = {
    "model": ANTHROPIC_MODEL,
    "max_tokens": 100,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}
OPENAI_CALL = {"model": OPENAI_MODEL, "stream": False, "input": "hi"}
MODEL_FIGURES = ("calls", "tokens_in", "tokens_out", "cache_read_tokens", "cache_write_tokens")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def agents_call_models(db: Database, sockets: Path, plan: dict[str, list[str]]) -> None:
    """Each task's agent calls the models through its gateway socket, as a Worker's does:
    ``plan`` names the calls by provider; a task with a ``budget`` call gets a budget of one
    token, so its calls after the first are refused."""
    with serve(Upstream().app()) as upstream:
        async with make_gateway(db, upstream) as gateway:
            for task_id, calls in plan.items():
                socket = socket_path_for(sockets, task_id)
                budget = Budget(max_tokens=1) if "budget" in calls else Budget()
                await gateway.open(task_id, socket, budget)
                async with uds_client(socket) as client:
                    for provider in calls:
                        if provider == "openai":
                            answer = await client.post("/v1/responses", json=OPENAI_CALL)
                        else:
                            answer = await client.post("/v1/messages", json=ANTHROPIC_CALL)
                        refused = provider == "budget"
                        assert answer.status_code == (400 if refused else 200), answer.text
                await gateway.close(task_id)


def summed(ledgers: list[TaskUsage]) -> TaskUsage:
    total = TaskUsage(task_id="sum")
    for ledger in ledgers:
        for name in (*MODEL_FIGURES, "refusals", "unpriced_calls"):
            setattr(total, name, getattr(total, name) + getattr(ledger, name))
        total.cost_usd += ledger.cost_usd
    return total


def assert_same(shown: dict, ledger: TaskUsage) -> None:
    assert {name: shown[name] for name in MODEL_FIGURES} == {
        name: getattr(ledger, name) for name in MODEL_FIGURES
    }
    assert (shown["refused_calls"], shown["unpriced_calls"]) == (ledger.refusals, 0)
    assert shown["cost_usd"] == pytest.approx(ledger.cost_usd, abs=1e-8)


async def test_usage_totals_are_the_gateway_ledgers_of_the_same_tasks(
    cli: Cli, api: Api, short_dir: Path
) -> None:
    shop, blog = (cli.json("project", "create", "--name", unique(p)) for p in ("shop", "blog"))

    def start(project: dict) -> str:
        started = cli.json("engineering", "start", "--project", project["id"], "--spec", "x")
        return str(started["task_id"])

    tasks = {shop["id"]: [start(shop), start(shop)], blog["id"]: [start(blog)]}
    cli.json("deploy", "start", "--project", blog["name"])
    first, second = tasks[shop["id"]]
    [third] = tasks[blog["id"]]
    db = Database(api.database_url)
    try:
        await agents_call_models(
            db,
            short_dir,
            {
                first: ["anthropic", "openai", "anthropic"],
                second: ["openai", "budget", "budget"],  # one answered, two refused
                third: ["anthropic"],
            },
        )
        ledgers = {
            project: summed([await load_usage(db, task_id) for task_id in task_ids])
            for project, task_ids in tasks.items()
        }
    finally:
        await db.dispose()
    assert ledgers[shop["id"]].calls == 4 and ledgers[shop["id"]].refusals == 2

    found = cli.json("usage")
    today = utcnow().date()
    assert (found["since"], found["until"]) == (str(today - timedelta(days=6)), str(today))
    projects = {used["project_id"]: used for used in found["projects"]}
    assert set(projects) == {shop["id"], blog["id"]}
    for project_id, ledger in ledgers.items():
        assert_same(projects[project_id], ledger)
        [day] = projects[project_id]["days"]  # all of it today
        assert_same(day, ledger)
        assert day["day"] == str(today)
    assert_same(found["total"], summed(list(ledgers.values())))
    assert (projects[blog["id"]]["deploys"], projects[shop["id"]]["deploys"]) == (1, 0)

    only_shop = cli.json("usage", "--project", shop["name"], "--since", str(today))
    assert [used["project_id"] for used in only_shop["projects"]] == [shop["id"]]
    assert_same(only_shop["total"], ledgers[shop["id"]])
    tomorrow = cli.json("usage", "--since", str(today + timedelta(days=1)))
    assert tomorrow["projects"] == [] and tomorrow["total"]["calls"] == 0

    table = cli("usage", COLUMNS="200")
    assert table.exit_code == 0, table.output
    for name in (shop["name"], blog["name"], "all projects", "2 refused"):
        assert name in table.stdout
    assert "budget" not in table.stdout

    # A budget the shop's calls of today are past: the day shows it.
    budgeted = cli.json("project", "update", shop["name"], "--daily-budget", "0.001")
    assert budgeted["daily_budget_usd"] == 0.001
    over = cli.json("usage", "--project", shop["name"])["projects"][0]
    assert over["daily_budget_usd"] == 0.001 and over["days"][0]["over_budget"] is True
    table = cli("usage", "--project", shop["name"], COLUMNS="200")
    assert "over budget" in table.stdout and "budget $0.00/day" in table.stdout
    assert "daily budget" in cli("project", "show", shop["name"]).stdout
    cleared = cli.json("project", "update", shop["name"], "--no-daily-budget")
    assert cleared["daily_budget_usd"] is None
    both = cli("project", "update", shop["name"], "--daily-budget", "1", "--no-daily-budget")
    assert both.exit_code == 2
    assert "Nothing used" in cli("usage", "--since", str(today + timedelta(days=1))).stdout


def test_usage_refuses_a_bad_day_and_names_an_unknown_project(cli: Cli) -> None:
    bad = cli.json("usage", "--since", "yesterday", expect=2)["error"]
    assert bad["status"] == 422 and "since" in bad["message"] + str(bad["detail"])
    cli.json("usage", "--since", "2026-02-30", expect=2)
    cli.json("usage", "--project", unique("nowhere"), expect=3)
