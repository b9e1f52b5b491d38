"""The real ``claude``, ``codex`` and ``droid`` binaries against local stand-ins of their model
APIs."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.agents import KEY_PLACEHOLDER, ClaudeAdapter, CodexAdapter, DroidAdapter
from infra.agents.base import AgentRequest
from testing.agents import run_agent
from testing.standins.anthropic_api import AnthropicStandIn
from testing.standins.openai_api import OpenAIStandIn
from testing.standins.recording import FileWrite, ModelScript

TWO_FILES = ModelScript(
    writes=[
        FileWrite("app/greet.py", "def greet(name):\n    return f'hello {name}'\n"),
        FileWrite("tests/test_greet.py", "from app.greet import greet\n"),
    ],
    final_text="Added greet() and its test.",
    input_tokens=150,
    output_tokens=25,
)


def _request(url: str, workspace: Path, tmp_path: Path, **extra: str) -> AgentRequest:
    return AgentRequest(
        prompt="-> Add a greet function with a test.",  # a leading dash is no option
        model_base_url=url,
        workdir=str(workspace),
        home=str(tmp_path / "home"),
        instructions="Project rule: keep functions small.",
        **extra,
    )


def test_claude_writes_files_and_reports_tokens_and_cost(
    agent_clis: dict[str, Path],
    anthropic_api: tuple[AnthropicStandIn, str],
    workspace: Path,
    tmp_path: Path,
) -> None:
    standin, url = anthropic_api
    standin.script = TWO_FILES
    run = run_agent(ClaudeAdapter(str(agent_clis["claude"])), _request(url, workspace, tmp_path))

    assert run.exit_code == 0, run.stderr
    assert (workspace / "app/greet.py").read_text() == TWO_FILES.writes[0].content
    assert (workspace / "tests/test_greet.py").read_text() == TWO_FILES.writes[1].content
    result = run.result
    assert result.status == "completed", result
    assert result.summary == "Added greet() and its test."
    assert result.files_changed == ["app/greet.py", "tests/test_greet.py"]
    calls = standin.message_requests()
    assert len(calls) == 3  # two tool rounds and the final answer
    assert (result.tokens_in, result.tokens_out) == (3 * 150, 3 * 25)
    assert result.cost_usd is not None and result.cost_usd > 0
    # Live events: each edit as it happens, then the final message.
    assert [e.text for e in run.events if e.kind == "file_change"] == [
        str(workspace / "app/greet.py"),
        str(workspace / "tests/test_greet.py"),
    ]
    assert run.events[-1].kind == "message" and run.events[-1].text == result.summary
    # What reached the model API: the placeholder key, and the instructions from CLAUDE.md.
    assert {c.headers.get("x-api-key") for c in calls} == {KEY_PLACEHOLDER}
    assert "Project rule: keep functions small." in str(calls[0].body)


def test_claude_runs_a_shell_command_before_its_writes(
    agent_clis: dict[str, Path],
    anthropic_api: tuple[AnthropicStandIn, str],
    workspace: Path,
    tmp_path: Path,
) -> None:
    standin, url = anthropic_api
    standin.script = ModelScript(
        commands=["printf 'from the shell\\n' > ran.txt"],
        writes=[FileWrite("notes.txt", "written after it\n")],
        final_text="Ran it.",
    )
    run = run_agent(ClaudeAdapter(str(agent_clis["claude"])), _request(url, workspace, tmp_path))

    assert run.exit_code == 0, run.stderr
    assert (workspace / "ran.txt").read_text() == "from the shell\n"
    assert (workspace / "notes.txt").read_text() == "written after it\n"
    assert run.result.status == "completed" and run.result.summary == "Ran it."
    assert [e.kind for e in run.events].count("command") == 1


def test_claude_blocked_and_failed(
    agent_clis: dict[str, Path],
    anthropic_api: tuple[AnthropicStandIn, str],
    workspace: Path,
    tmp_path: Path,
) -> None:
    standin, url = anthropic_api
    adapter = ClaudeAdapter(str(agent_clis["claude"]))
    standin.script = ModelScript(
        writes=[], final_text="I need a decision.\nBLOCKED: Which port should the API use?"
    )
    blocked = run_agent(adapter, _request(url, workspace, tmp_path)).result
    assert blocked.status == "blocked"
    assert blocked.question == "Which port should the API use?"

    standin.script = ModelScript(error=(400, "task budget exceeded"))
    failed = run_agent(adapter, _request(url, workspace, tmp_path))
    assert failed.result.status == "failed"
    assert "task budget exceeded" in (failed.result.raw_error or "")
    assert any(e.kind == "error" and "task budget exceeded" in e.text for e in failed.events)


@pytest.mark.parametrize("edit_with", ["apply_patch", "shell"])
def test_codex_writes_files_and_reports_tokens(
    agent_clis: dict[str, Path],
    openai_api: tuple[OpenAIStandIn, str],
    workspace: Path,
    tmp_path: Path,
    edit_with: str,
) -> None:
    standin, url = openai_api
    standin.script, standin.edit_with = TWO_FILES, edit_with  # type: ignore[assignment]
    run = run_agent(CodexAdapter(str(agent_clis["codex"])), _request(url, workspace, tmp_path))

    assert run.exit_code == 0, run.stderr
    assert (workspace / "app/greet.py").read_text() == TWO_FILES.writes[0].content
    assert (workspace / "tests/test_greet.py").read_text() == TWO_FILES.writes[1].content
    result = run.result
    assert result.status == "completed", result
    assert result.summary == "Added greet() and its test."
    calls = standin.response_requests()
    assert len(calls) == 3
    assert (result.tokens_in, result.tokens_out) == (3 * 150, 3 * 25)
    assert result.cost_usd is None  # codex reports no cost
    assert {c.headers.get("authorization") for c in calls} == {f"Bearer {KEY_PLACEHOLDER}"}
    assert "Project rule: keep functions small." in str(calls[0].body)
    if edit_with == "apply_patch":
        # Codex names the patched files; a shell command's effects are not tracked by it.
        assert result.files_changed == ["app/greet.py", "tests/test_greet.py"]
        assert [e.kind for e in run.events] == ["file_change", "file_change", "message"]
    else:
        assert result.files_changed == []
        commands = [e for e in run.events if e.kind == "command"]
        assert [e.data.get("exit_code") for e in commands if "status" not in e.data] == [0, 0]
    assert run.events[-1].text == result.summary


def test_codex_blocked_and_failed(
    agent_clis: dict[str, Path],
    openai_api: tuple[OpenAIStandIn, str],
    workspace: Path,
    tmp_path: Path,
) -> None:
    standin, url = openai_api
    adapter = CodexAdapter(str(agent_clis["codex"]))
    standin.script = ModelScript(writes=[], final_text="BLOCKED: Which license?")
    blocked = run_agent(adapter, _request(url, workspace, tmp_path)).result
    assert (blocked.status, blocked.question) == ("blocked", "Which license?")

    standin.script = ModelScript(error=(400, "task budget exceeded"))
    failed = run_agent(adapter, _request(url, workspace, tmp_path))
    assert failed.result.status == "failed"
    assert "task budget exceeded" in (failed.result.raw_error or "")
    assert any(e.kind == "error" for e in failed.events)


def test_droid_writes_files_and_reports_tokens(
    agent_clis: dict[str, Path],
    anthropic_api: tuple[AnthropicStandIn, str],
    workspace: Path,
    tmp_path: Path,
) -> None:
    standin, url = anthropic_api
    standin.script = TWO_FILES
    # droid reads the repository's AGENTS.md by itself (the adapters' default assumption).
    (workspace / "AGENTS.md").write_text("Repository rule: tests live in tests/.\n")
    run = run_agent(DroidAdapter(str(agent_clis["droid"])), _request(url, workspace, tmp_path))

    assert run.exit_code == 0, run.stderr
    assert (workspace / "app/greet.py").read_text() == TWO_FILES.writes[0].content
    assert (workspace / "tests/test_greet.py").read_text() == TWO_FILES.writes[1].content
    result = run.result
    assert result.status == "completed", result
    assert result.summary == "Added greet() and its test."
    assert result.files_changed == ["app/greet.py", "tests/test_greet.py"]
    calls = standin.message_requests()
    assert len(calls) == 3  # two tool rounds and the final answer
    assert (result.tokens_in, result.tokens_out) == (3 * 150, 3 * 25)
    assert result.cost_usd is None  # droid counts Factory credits, not dollars
    assert [(e.kind, e.text) for e in run.events] == [
        ("file_change", str(workspace / "app/greet.py")),
        ("file_change", str(workspace / "tests/test_greet.py")),
        ("message", result.summary),
    ]
    # Airgap Mode: droid's own log names no call to Factory's servers (without it, this host's
    # failed lookups of api.factory.ai fill it: sign-in, flags, session sync, usage reports).
    logs = list((tmp_path / "home" / ".factory" / "logs").glob("*.log"))
    assert logs and "Airgap Mode is enabled" in "".join(p.read_text() for p in logs)
    assert not [p for p in logs if "factory.ai" in p.read_text()]
    # Only the stand-in was called, with the placeholder key and the instructions from
    # ~/.factory/AGENTS.md.
    assert {c.path for c in standin.requests} == {"/v1/messages"}
    assert {c.headers.get("x-api-key") for c in calls} == {KEY_PLACEHOLDER}
    assert "Project rule: keep functions small." in str(calls[0].body)
    assert "Repository rule: tests live in tests/." in str(calls[0].body)


def test_droid_runs_a_shell_command_before_its_writes(
    agent_clis: dict[str, Path],
    anthropic_api: tuple[AnthropicStandIn, str],
    workspace: Path,
    tmp_path: Path,
) -> None:
    standin, url = anthropic_api
    standin.script = ModelScript(
        commands=["printf 'from the shell\\n' > ran.txt"],
        writes=[FileWrite("notes.txt", "written after it\n")],
        final_text="Ran it.",
    )
    run = run_agent(DroidAdapter(str(agent_clis["droid"])), _request(url, workspace, tmp_path))

    assert run.exit_code == 0, run.stderr
    assert (workspace / "ran.txt").read_text() == "from the shell\n"
    assert (workspace / "notes.txt").read_text() == "written after it\n"
    assert run.result.status == "completed" and run.result.summary == "Ran it."
    assert run.result.files_changed == ["notes.txt"]  # droid names what its Create wrote
    commands = [e for e in run.events if e.kind == "command"]
    assert [(e.text, e.data["tool"]) for e in commands] == [(standin.script.commands[0], "Execute")]


def test_droid_blocked_and_failed(
    agent_clis: dict[str, Path],
    anthropic_api: tuple[AnthropicStandIn, str],
    workspace: Path,
    tmp_path: Path,
) -> None:
    standin, url = anthropic_api
    adapter = DroidAdapter(str(agent_clis["droid"]))
    standin.script = ModelScript(writes=[], final_text="BLOCKED: Which port should the API use?")
    blocked = run_agent(adapter, _request(url, workspace, tmp_path)).result
    assert (blocked.status, blocked.question) == ("blocked", "Which port should the API use?")

    standin.script = ModelScript(error=(400, "task budget exceeded"))
    failed = run_agent(adapter, _request(url, workspace, tmp_path))
    assert failed.exit_code == 1
    assert failed.result.status == "failed"
    assert "task budget exceeded" in (failed.result.raw_error or "")
    assert any(e.kind == "error" and "task budget exceeded" in e.text for e in failed.events)
