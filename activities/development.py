"""The activity nodes of the development graph (workflows/development.py).

Each method is one LangGraph node that temporalio-langgraph runs as a Temporal activity: it gets
the graph's state (a JSON dict) and returns the update to it. The nodes hold their dependencies
here (the database through the task service, the Worker and engineering activities, the forge),
so tests build them with real or local parts. Every node records the task events of its stage
itself, and is safe to play again after a crash (a retried turn or test run starts over; the
pull request is idempotent per branch).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from activities.engineering import CommitInput, EngineeringActivities, RunTestsInput, TestReport
from activities.forge import OpenPullRequestInput, PullRequestActivities, TestOutcome
from activities.workers import AgentTurnInput, WorkerActivities
from core.contracts.agents import AgentEvent, Budget, uses_model
from core.enums import EventType
from core.logging import get_logger
from core.paths import DEPLOY_DIR
from db.tasks import TaskService
from infra.agents import ADAPTERS
from infra.agents.base import project_instructions

log = get_logger("activities.development")

DEVELOPER, TESTER, PULL_REQUEST = "developer", "tester", "pull_request"
TURN_TIMEOUT_S = 600.0
TEST_TIMEOUT_S = 600.0
# Live agent events kept per turn: an agent that edits hundreds of files must not flood the task.
MAX_LIVE_EVENTS = 200
LIVE_KINDS = frozenset({"file_change", "command", "error"})
# The engineering department's own rules for every coding agent (the branch, the tests, packages,
# secrets, when to ask), joined with the task's and the project's.
ENGINEERING_INSTRUCTIONS = DEPLOY_DIR / "engineering" / "AGENTS.md"


class DevelopmentState(TypedDict):
    """The graph's state. Everything is JSON: it crosses activity boundaries as it is."""

    task_id: str
    project_id: str
    repo_full_name: str
    worker_id: str
    workspace: str
    base_sha: str
    branch: str
    agent: str
    agent_options: dict[str, Any]
    model: str | None
    instructions: str | None
    prompt: str
    max_rounds: int
    budget: dict[str, Any]
    deadline: str  # ISO time; moved on by the time spent waiting for a person
    turns: int  # agent turns run
    rounds: int  # test runs: the round limit counts these
    feedback: NotRequired[str | None]  # test failures or a person's answer, for the next turn
    question: NotRequired[str | None]  # the agent's question when it is blocked
    report: NotRequired[dict[str, Any] | None]  # the last TestReport
    failure: NotRequired[str | None]  # why the loop stops without a pull request
    pull: NotRequired[dict[str, Any] | None]  # the pull request opened
    files_changed: NotRequired[list[str]]
    commit_sha: NotRequired[str | None]


class DevelopmentNodes:
    def __init__(
        self,
        tasks: TaskService,
        workers: WorkerActivities,
        engineering: EngineeringActivities,
        pulls: PullRequestActivities,
    ) -> None:
        self.tasks = tasks
        self.workers = workers
        self.engineering = engineering
        self.pulls = pulls

    async def developer(self, state: DevelopmentState) -> dict[str, Any]:
        """One agent turn in the task's Worker, on the task, its feedback or a person's answer."""
        turn = state["turns"] + 1
        round_ = state["rounds"] + 1
        await self._event(
            state,
            EventType.stage_started,
            f"Round {round_}: the {state['agent']} agent works on the task",
            stage=DEVELOPER,
            data={"round": round_, "turn": turn},
        )
        request = AgentTurnInput(
            worker_id=state["worker_id"],
            task_id=state["task_id"],
            agent=state["agent"],
            prompt=_prompt(state),
            agent_options=state["agent_options"],
            instructions=turn_instructions(state),
            model=state.get("model"),
            timeout_s=TURN_TIMEOUT_S,
            budget=Budget.model_validate(state["budget"]),
        )
        async with self._live_events(state, round_) as on_event:
            result = await self.workers.agent_turn(request, on_event)
        update: dict[str, Any] = {"turns": turn, "feedback": None, "question": None}
        if result.status == "blocked":
            await self._event(
                state,
                EventType.progress,
                f"Round {round_}: the agent is blocked and asks: {result.question}",
                stage=DEVELOPER,
                data={"round": round_, "question": result.question},
            )
            return {**update, "question": result.question or "The agent asked no question."}
        if result.status != "completed":
            return {**update, "failure": await self._why_failed(state, round_, result.raw_error)}
        await self._event(
            state,
            EventType.stage_completed,
            f"Round {round_}: the agent is done: {result.summary or 'no summary'}",
            stage=DEVELOPER,
            data={"round": round_, "files_changed": result.files_changed},
        )
        return update

    async def tester(self, state: DevelopmentState) -> dict[str, Any]:
        """The project's tests in the same Worker; failures become the next turn's feedback."""
        round_ = state["rounds"] + 1
        await self._event(
            state,
            EventType.stage_started,
            f"Round {round_}: running the project's tests",
            stage=TESTER,
            data={"round": round_},
        )
        report = await self.engineering.run_tests(
            RunTestsInput(worker_id=state["worker_id"], timeout_s=TEST_TIMEOUT_S)
        )
        failing = ", ".join(report.failing_tests)
        verdict = "pass" if report.passed else "fail" + (f": {failing}" if failing else "")
        await self._event(
            state,
            EventType.stage_completed,
            f"Round {round_}: the tests {verdict} ({report.summary})",
            stage=TESTER,
            data={"round": round_, **report.model_dump(exclude={"output"})},
        )
        feedback = None if report.passed else failure_feedback(report)
        return {"rounds": round_, "report": report.model_dump(), "feedback": feedback}

    async def propose(self, state: DevelopmentState) -> dict[str, Any]:
        """Commit what the agent left, push the branch and open (or find) its pull request."""
        branch = state["branch"]
        commit = await self.engineering.commit_workspace(
            CommitInput(
                path=state["workspace"],
                base_sha=state["base_sha"],
                message=f"{_title(state['prompt'])}\n\nTask {state['task_id']}: the agent's "
                "remaining changes.",
            )
        )
        if not commit.files_changed:
            return {"failure": "the agent changed no file: there is nothing to propose"}
        await self._event(
            state,
            EventType.stage_started,
            f"Pushing {branch} and opening its pull request",
            stage=PULL_REQUEST,
        )
        report = TestReport.model_validate(state.get("report") or {"passed": True, "exit_code": 0})
        pull = await self.pulls.open_pull_request(
            OpenPullRequestInput(
                project_id=state["project_id"],
                task_id=state["task_id"],
                repo_full_name=state["repo_full_name"],
                branch=branch,
                title=_title(state["prompt"]),
                body=_body(state, report, commit.files_changed),
                test_outcome=TestOutcome(
                    passed=report.tests_run - report.failures - report.errors - report.skipped,
                    failed=report.failures,
                    errors=report.errors,
                    skipped=report.skipped,
                    summary=report.summary,
                ),
                worktree=state["workspace"],
            )
        )
        await self._event(
            state,
            EventType.stage_completed,
            f"Pull request #{pull.number} opened: {pull.url}",
            stage=PULL_REQUEST,
            data={"number": pull.number, "url": pull.url, "head_sha": pull.head_sha},
        )
        return {
            "pull": {"number": pull.number, "url": pull.url, "head_sha": pull.head_sha},
            "files_changed": commit.files_changed,
            "commit_sha": pull.head_sha or commit.commit_sha,
        }

    # --- helpers ---------------------------------------------------------------------------------

    async def _why_failed(self, state: DevelopmentState, round_: int, error: str | None) -> str:
        refusal = None
        if uses_model(state["agent"]) and self.workers.gateway is not None:
            refusal = (await self.workers.gateway.load_usage(state["task_id"])).last_refusal
        if refusal:
            return f"the model gateway refused the agent's call in round {round_}: {refusal}"
        return f"the agent failed in round {round_}: {error or 'no reason given'}"

    @contextlib.asynccontextmanager
    async def _live_events(
        self, state: DevelopmentState, round_: int
    ) -> AsyncIterator[Callable[[AgentEvent], None]]:
        """The agent's edits and commands as task events while it works (in order, bounded)."""
        queue: asyncio.Queue[AgentEvent | None] = asyncio.Queue()
        seen = 0

        def on_event(event: AgentEvent) -> None:
            nonlocal seen
            if event.kind in LIVE_KINDS and seen < MAX_LIVE_EVENTS:
                seen += 1
                queue.put_nowait(event)

        async def record() -> None:
            while (event := await queue.get()) is not None:
                try:
                    await self._event(
                        state,
                        EventType.progress,
                        f"Round {round_}: {event.kind.replace('_', ' ')}: {event.text}",
                        stage=DEVELOPER,
                        data={"round": round_, "agent_event": event.kind},
                    )
                except Exception as exc:  # progress only: the turn goes on without it
                    log.warning("live agent event not recorded", error=str(exc))

        recorder = asyncio.create_task(record())
        try:
            yield on_event
        finally:
            queue.put_nowait(None)
            await recorder

    async def _event(
        self,
        state: DevelopmentState,
        type: EventType,
        message: str,
        *,
        stage: str,
        data: dict[str, Any] | None = None,
    ) -> None:
        progress = min(0.3 + 0.15 * (state["rounds"] + 1), 0.85)
        if stage == PULL_REQUEST:
            progress = 0.9 if type is EventType.stage_started else 0.95
        await self.tasks.add_event(
            state["task_id"], type, message, stage=stage, progress=progress, data=data
        )


def failure_feedback(report: TestReport) -> str:
    """What the agent is told of failing tests for its next turn: the command, each failing test
    by name with its message (when the report has one), then the output's tail."""
    failing = ", ".join(report.failing_tests)
    lines = [
        f"The project's tests fail ({report.summary}): {failing or 'see the output'}.",
        f"The test command: {report.command}" if report.command else "",
    ]
    for name, message in report.failure_messages.items():
        lines.append(f"- {name}: " + message.replace("\n", "\n    "))
    if report.output:
        lines += ["Its output ends with:", report.output]
    return "\n".join(line for line in lines if line)


@functools.cache
def engineering_instructions() -> str:
    return ENGINEERING_INSTRUCTIONS.read_text().strip()


def turn_instructions(state: DevelopmentState) -> str:
    """What the agent is told besides its prompt: engineering's rules, then the task's, then the
    project's ``AGENTS.md`` when the agent's CLI would not read it by itself (read at each turn:
    the agent may change it)."""
    parts = [engineering_instructions()]
    if state.get("instructions"):
        parts.append(f"## This task's rules\n\n{str(state['instructions']).strip()}")
    adapter = ADAPTERS.get(state["agent"])
    project = project_instructions(Path(state["workspace"]), adapter) if adapter else None
    if project:
        parts.append(f"## This project's AGENTS.md\n\n{project}")
    return "\n\n".join(parts)


def _prompt(state: DevelopmentState) -> str:
    feedback = state.get("feedback")
    if not feedback:
        return state["prompt"]
    return f"{state['prompt']}\n\n{feedback}"


def _title(prompt: str) -> str:
    """A pull request title from the task: its first line, kept short."""
    first = next((line.strip() for line in prompt.splitlines() if line.strip()), "")
    first = first.rstrip(".")
    return (first[:69] + "…") if len(first) > 70 else (first or "Changes by the coding agent")


def _body(state: DevelopmentState, report: TestReport, files: list[str]) -> str:
    listed = "\n".join(f"- `{name}`" for name in files[:50])
    more = f"\n- … and {len(files) - 50} more" if len(files) > 50 else ""
    return (
        f"## Task\n\n{state['prompt'].strip()}\n\n"
        f"## What was done\n\nWritten by the `{state['agent']}` agent in {state['rounds']} "
        f"round(s) on `{state['branch']}`.\n\n{listed}{more}\n\n"
        f"## Tests\n\n`{report.command}`: {report.summary or 'not run'}.\n\n"
        f"Task `{state['task_id']}`."
    )
