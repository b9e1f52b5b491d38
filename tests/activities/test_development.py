"""What the agent is told: the Tester's failing tests for its next turn, and its instructions."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from activities.development import (
    ENGINEERING_INSTRUCTIONS,
    DevelopmentState,
    failure_feedback,
    turn_instructions,
)
from infra.test_reports import parse_junit

REPORT = """<testsuite>
<testcase classname="tests.test_greeting" name="test_greets">
  <failure message="AssertionError: 'Hi' != 'Hello, Ada!'">Traceback (most recent call last):
  File "tests/test_greeting.py", line 6, in test_greets</failure>
</testcase>
<testcase classname="tests.test_greeting" name="test_waves"><error message="NameError: wave"/>
</testcase>
</testsuite>"""


def test_the_agent_is_told_each_failing_test_with_its_message() -> None:
    report = parse_junit(REPORT, 1, "2 failed in 0.1s", command="./run-tests")
    feedback = failure_feedback(report)
    assert feedback.splitlines() == [
        "The project's tests fail (2 tests ran: 1 failed, 1 errors, 0 skipped): "
        "tests.test_greeting.test_greets, tests.test_greeting.test_waves.",
        "The test command: ./run-tests",
        "- tests.test_greeting.test_greets: AssertionError: 'Hi' != 'Hello, Ada!'",
        "    Traceback (most recent call last):",
        '      File "tests/test_greeting.py", line 6, in test_greets',
        "- tests.test_greeting.test_waves: NameError: wave",
        "Its output ends with:",
        "2 failed in 0.1s",
    ]


def state_for(agent: str, workspace: Path, instructions: str | None = None) -> DevelopmentState:
    return cast(
        DevelopmentState,
        {"agent": agent, "workspace": str(workspace), "instructions": instructions},
    )


def test_every_agent_gets_engineerings_rules_then_the_tasks(tmp_path: Path) -> None:
    text = turn_instructions(state_for("codex", tmp_path, "Use Flask, not Django."))
    rules = ENGINEERING_INSTRUCTIONS.read_text().strip()
    assert text.startswith(rules)
    for rule in ("task's own branch", "make test", "Keep secrets out of the code", "one question"):
        assert rule in rules
    assert text.endswith("## This task's rules\n\nUse Flask, not Django.")


def test_claude_gets_the_projects_agents_md_it_would_not_read(tmp_path: Path) -> None:
    (tmp_path / "AGENTS.md").write_text("# Layout\nRoutes live in app/routes/.\n")
    text = turn_instructions(state_for("claude", tmp_path))
    assert text.endswith("## This project's AGENTS.md\n\n# Layout\nRoutes live in app/routes/.")
    # Codex and droid read AGENTS.md themselves: it is not sent twice.
    assert "Routes live" not in turn_instructions(state_for("codex", tmp_path))
    assert "Routes live" not in turn_instructions(state_for("droid", tmp_path))


def test_claude_reads_a_projects_claude_md_itself(tmp_path: Path) -> None:
    (tmp_path / "AGENTS.md").write_text("Routes live in app/routes/.\n")
    (tmp_path / "CLAUDE.md").write_text("See @AGENTS.md\n")
    assert "Routes live" not in turn_instructions(state_for("claude", tmp_path))


def test_a_linked_agents_md_is_not_followed_out_of_the_workspace(tmp_path: Path) -> None:
    outside = tmp_path / "host-file"
    outside.write_text("a file of the host\n")
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "AGENTS.md").symlink_to(outside)
    assert "a file of the host" not in turn_instructions(state_for("claude", workspace))
    (workspace / "AGENTS.md").unlink()
    (workspace / "AGENTS.md").mkdir()  # not a file either
    assert "This project's AGENTS.md" not in turn_instructions(state_for("claude", workspace))
