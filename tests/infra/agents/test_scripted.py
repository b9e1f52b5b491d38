"""The scripted agent's runner, run with the host's python3 on a temporary git workspace."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from infra.agents import AgentRequest, ScriptedAdapter
from infra.agents.scripted import RUNNER_SOURCE
from testing.agents import run_agent

FAILING_TEST = "from app.calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
# What the project's test command would check (kept to the standard library).
CHECK = ["python3", "-B", "-c", "from app.calc import add; assert add(2, 3) == 5"]
TEST_AND_FIX: dict[str, Any] = {
    "rounds": [
        {
            "write": [
                {"path": "app/__init__.py", "content": ""},
                {"path": "app/calc.py", "content": "def add(a, b):\n    return a - b\n"},
                {"path": "tests/test_calc.py", "content": FAILING_TEST},
            ],
            "run": CHECK,
            "report": "completed",
            "summary": "Added add() and its test.",
        },
        {
            "write": {"path": "app/calc.py", "content": "def add(a, b):\n    return a + b\n"},
            "run": CHECK,
            "commit": "Fix add()",
            "summary": "Fixed add().",
        },
    ]
}


@pytest.fixture
def repo(workspace: Path) -> Path:
    subprocess.run(["git", "init", "-q", "-b", "main", str(workspace)], check=True)
    return workspace


def _request(workspace: Path, tmp_path: Path) -> AgentRequest:
    return AgentRequest(
        prompt="Add an add() function.",
        model_base_url="http://127.0.0.1:9",  # the scripted agent calls no model
        workdir=str(workspace),
        home=str(tmp_path / "home"),
    )


def _adapter(script: dict[str, Any]) -> ScriptedAdapter:
    return ScriptedAdapter(script, runner=str(RUNNER_SOURCE))


def test_two_rounds_first_fails_then_fixes(repo: Path, tmp_path: Path) -> None:
    adapter = _adapter(TEST_AND_FIX)

    first = run_agent(adapter, _request(repo, tmp_path))
    assert first.exit_code == 0, first.stderr
    assert first.result.status == "completed"
    assert first.result.summary == "Added add() and its test."
    assert first.result.files_changed == ["app/__init__.py", "app/calc.py", "tests/test_calc.py"]
    assert first.result.commit is None
    runs = [e for e in first.events if e.kind == "command"]
    assert len(runs) == 1 and runs[0].data["exit_code"] != 0  # the new test fails
    assert [e.text for e in first.events if e.kind == "file_change"] == first.result.files_changed

    second = run_agent(adapter, _request(repo, tmp_path))
    assert second.result.status == "completed"
    assert second.result.summary == "Fixed add()."
    assert second.result.files_changed == ["app/calc.py"]
    assert [e.data["exit_code"] for e in second.events if e.kind == "command"] == [0]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert second.result.commit == head
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "tests/test_calc.py" in tracked
    assert not any("scripted-agent" in path for path in tracked)  # the counter is not committed
    # A third invocation replays the last round: harmless, still green.
    assert run_agent(adapter, _request(repo, tmp_path)).result.summary == "Fixed add()."


def test_blocked_round_reports_its_question(workspace: Path, tmp_path: Path) -> None:
    script = {
        "rounds": [{"report": "blocked", "question": "Which database: SQLite or PostgreSQL?"}]
    }
    run = run_agent(_adapter(script), _request(workspace, tmp_path))
    assert run.exit_code == 0
    assert run.result.status == "blocked"
    assert run.result.question == "Which database: SQLite or PostgreSQL?"
    # Outside a git repository the round counter lives in the workspace.
    assert (workspace / ".scripted-agent-round").read_text().strip() == "1"


def test_round_chosen_by_environment(workspace: Path) -> None:
    script = workspace.parent / "script.json"
    script.write_text(json.dumps(TEST_AND_FIX))
    done = subprocess.run(
        ["python3", str(RUNNER_SOURCE), "--script", str(script), "--workdir", str(workspace)],
        env={"PATH": "/usr/bin:/bin", "SCRIPTED_AGENT_ROUND": "2"},
        capture_output=True,
        text=True,
    )
    lines = done.stdout.splitlines()
    assert json.loads(lines[0]) == {"type": "start", "round": 2, "rounds": 2}
    result = ScriptedAdapter().result(lines, done.returncode)
    assert result.status == "failed"  # round 2 commits, and this workspace is no repository
    assert "git add failed" in (result.raw_error or "")


def test_bad_scripts_fail_cleanly(workspace: Path, tmp_path: Path) -> None:
    escape = {"rounds": [{"write": {"path": "../outside.txt", "content": "x"}}]}
    run = run_agent(_adapter(escape), _request(workspace, tmp_path))
    assert run.exit_code == 1
    assert run.result.status == "failed"
    assert "leaves the workspace" in (run.result.raw_error or "")
    assert not (workspace.parent / "outside.txt").exists()

    no_script = run_agent(ScriptedAdapter(runner=str(RUNNER_SOURCE)), _request(workspace, tmp_path))
    assert no_script.result.status == "failed"
    assert "no script" in (no_script.result.raw_error or "")


def test_run_sees_the_prompt_and_the_summary_carries_its_output(
    workspace: Path, tmp_path: Path
) -> None:
    """A scripted PO answers with what its command printed for the user's message."""
    script = {
        "rounds": [
            {
                "run": 'printf "  you said: %s\\n\\n" "$SCRIPTED_AGENT_PROMPT"',
                "summary": "Done. {output} (that is all)",
            },
            {"summary": "no command: [{output}]"},
        ]
    }
    request = _request(workspace, tmp_path).model_copy(update={"prompt": "make me a 'todo' API"})
    first = run_agent(_adapter(script), request)
    assert first.result.status == "completed", first.result
    assert first.result.summary == "Done. you said: make me a 'todo' API (that is all)"
    assert [e.data["output"] for e in first.events if e.kind == "command"] == [
        "  you said: make me a 'todo' API\n\n"
    ]
    second = run_agent(_adapter(script), request)
    assert second.result.summary == "no command: []"
