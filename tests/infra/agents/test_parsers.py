"""The adapters' parsers on the CLIs' real output, captured by capture.py (fixtures/)."""

from __future__ import annotations

import json
from pathlib import Path

from infra.agents import (
    KEY_PLACEHOLDER,
    AgentRequest,
    ClaudeAdapter,
    CodexAdapter,
    DroidAdapter,
    get_adapter,
)

FIXTURES = Path(__file__).parent / "fixtures"
CAPTURE_WORKSPACE = "/tmp/orchestrator-agent-capture/workspace"  # where capture.py ran them
FILES = ["app/greet.py", "tests/test_greet.py"]


def _lines(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


def test_claude_completed_capture() -> None:
    adapter, lines = ClaudeAdapter(), _lines("claude_completed.jsonl")
    result = adapter.result(lines, 0, workdir=CAPTURE_WORKSPACE)
    assert result.status == "completed"
    assert result.summary == "Added greet() and its test."
    assert result.files_changed == FILES
    assert (result.tokens_in, result.tokens_out) == (450, 75)
    final = json.loads(lines[-1])
    assert result.cost_usd is not None and result.cost_usd == final["total_cost_usd"] > 0
    events = [e for line in lines for e in adapter.parse_line(line)]
    assert [(e.kind, e.text) for e in events] == [
        ("file_change", f"{CAPTURE_WORKSPACE}/app/greet.py"),
        ("file_change", f"{CAPTURE_WORKSPACE}/tests/test_greet.py"),
        ("message", "Added greet() and its test."),
    ]
    assert events[0].data["tool"] == "Write"


def test_claude_api_error_capture() -> None:
    adapter, lines = ClaudeAdapter(), _lines("claude_api_error.jsonl")
    result = adapter.result(lines, 1, workdir=CAPTURE_WORKSPACE)
    assert result.status == "failed"
    assert "task budget exceeded" in (result.raw_error or "")
    assert result.files_changed == [] and result.question is None
    kinds = {e.kind for line in lines for e in adapter.parse_line(line)}
    assert kinds == {"error"}


def test_claude_without_result_line_failed() -> None:
    lines = _lines("claude_completed.jsonl")[:-1]  # killed before the end
    result = ClaudeAdapter().result(lines, -9, workdir=CAPTURE_WORKSPACE)
    assert result.status == "failed"
    assert "-9" in (result.raw_error or "")
    assert result.files_changed == FILES  # what it did before dying still counts


def test_claude_blocked_marker() -> None:
    lines = _lines("claude_completed.jsonl")
    final = json.loads(lines[-1])
    final["result"] = "Half done.\n**BLOCKED: Should greet() accept None?**"
    result = ClaudeAdapter().result([*lines[:-1], json.dumps(final)], 0)
    assert (result.status, result.question) == ("blocked", "Should greet() accept None?")


def test_codex_apply_patch_capture() -> None:
    adapter, lines = CodexAdapter(), _lines("codex_apply_patch.jsonl")
    result = adapter.result(lines, 0, workdir=CAPTURE_WORKSPACE)
    assert result.status == "completed"
    assert result.summary == "Added greet() and its test."
    assert result.files_changed == FILES
    assert (result.tokens_in, result.tokens_out, result.cost_usd) == (450, 75, None)
    events = [e for line in lines for e in adapter.parse_line(line)]
    assert [(e.kind, e.text) for e in events] == [
        ("file_change", f"{CAPTURE_WORKSPACE}/app/greet.py"),
        ("file_change", f"{CAPTURE_WORKSPACE}/tests/test_greet.py"),
        ("message", "Added greet() and its test."),
    ]
    assert events[0].data["kind"] == "add"


def test_codex_shell_capture() -> None:
    adapter, lines = CodexAdapter(), _lines("codex_shell.jsonl")
    result = adapter.result(lines, 0, workdir=CAPTURE_WORKSPACE)
    assert (result.status, result.tokens_in, result.tokens_out) == ("completed", 450, 75)
    events = [e for line in lines for e in adapter.parse_line(line)]
    commands = [e for e in events if e.kind == "command"]
    # Each command once when it starts, once with its exit code when it ends.
    assert [e.data.get("status", e.data.get("exit_code")) for e in commands] == [
        "started",
        0,
        "started",
        0,
    ]
    assert "app/greet.py" in commands[0].text


def test_codex_api_error_capture() -> None:
    adapter, lines = CodexAdapter(), _lines("codex_api_error.jsonl")
    result = adapter.result(lines, 1, workdir=CAPTURE_WORKSPACE)
    assert result.status == "failed"
    assert result.raw_error == "task budget exceeded"
    assert [e.text for line in lines for e in adapter.parse_line(line)] == [
        "task budget exceeded",
        "task budget exceeded",
    ]


def test_codex_non_json_and_truncated_output_failed() -> None:
    lines = ["Reading additional input from stdin...", *_lines("codex_apply_patch.jsonl")[:-1]]
    result = CodexAdapter().result(lines, 0)
    assert result.status == "failed"  # no turn.completed: the run did not finish
    assert "without a finished turn" in (result.raw_error or "")


def test_droid_completed_capture() -> None:
    adapter, lines = DroidAdapter(), _lines("droid_completed.jsonl")
    result = adapter.result(lines, 0, workdir=CAPTURE_WORKSPACE)
    assert result.status == "completed"
    assert result.summary == "Added greet() and its test."
    assert result.files_changed == FILES
    assert (result.tokens_in, result.tokens_out, result.cost_usd) == (450, 75, None)
    events = [e for line in lines for e in adapter.parse_line(line)]
    assert [(e.kind, e.text) for e in events] == [
        ("file_change", f"{CAPTURE_WORKSPACE}/app/greet.py"),
        ("file_change", f"{CAPTURE_WORKSPACE}/tests/test_greet.py"),
        ("message", "Added greet() and its test."),
    ]
    assert events[0].data["tool"] == "Create"


def test_droid_api_error_capture() -> None:
    adapter, lines = DroidAdapter(), _lines("droid_api_error.jsonl")
    result = adapter.result(lines, 1, workdir=CAPTURE_WORKSPACE)
    assert result.status == "failed"
    assert "task budget exceeded" in (result.raw_error or "")
    assert "(exit 1)" in (result.raw_error or "")
    assert result.files_changed == [] and result.question is None
    events = [e for line in lines for e in adapter.parse_line(line)]
    assert [e.kind for e in events] == ["error", "error"]
    assert "task budget exceeded" in events[0].text and events[1].text == "Exec failed"


def test_droid_killed_or_failed_tool_and_blocked() -> None:
    lines = _lines("droid_completed.jsonl")
    killed = DroidAdapter().result(lines[:-1], -9, workdir=CAPTURE_WORKSPACE)
    assert killed.status == "failed" and "no completion line (exit -9)" in (killed.raw_error or "")
    assert killed.files_changed == FILES  # what it did before dying still counts

    # A Create whose result is an error changed nothing.
    second_result = json.loads(lines[5])
    assert second_result["type"] == "tool_result"
    second_result |= {"isError": True, "value": "EACCES: permission denied"}
    edited = [*lines[:5], json.dumps(second_result), *lines[6:]]
    result = DroidAdapter().result(edited, 0, workdir=CAPTURE_WORKSPACE)
    assert result.files_changed == ["app/greet.py"]
    assert [e.kind for e in DroidAdapter().parse_line(json.dumps(second_result))] == ["error"]

    final = json.loads(lines[-1]) | {"finalText": "Half done.\nBLOCKED: Which branch?"}
    blocked = DroidAdapter().result(["noise", *lines[:-1], json.dumps(final)], 0)
    assert (blocked.status, blocked.question) == ("blocked", "Which branch?")
    assert DroidAdapter().result(["not json"], 2).status == "failed"


def test_commands_carry_no_secret_and_point_at_the_forwarder() -> None:
    request = AgentRequest(
        prompt="do it", model_base_url="http://127.0.0.1:7000", instructions="Use pytest."
    )
    for name in ("claude", "codex", "droid"):
        command = get_adapter(name).command(request)
        assert command.cwd == "/workspace"
        assert command.argv[0] == name and "do it" in command.argv
        text = json.dumps(command.model_dump())
        assert "http://127.0.0.1:7000" in text
        assert "Use pytest." in text and "BLOCKED:" in text
        for file in command.files:
            assert file.path.startswith("/tmp/agent-home/")  # never inside the repository
        keys = {k: v for k, v in command.env.items() if "KEY" in k}
        assert all(v == KEY_PLACEHOLDER for v in keys.values())
    codex = get_adapter("codex").command(request)
    config = next(f.content for f in codex.files if f.path.endswith("config.toml"))
    assert 'base_url = "http://127.0.0.1:7000/v1"' in config
    assert 'wire_api = "responses"' in config
    droid = get_adapter("droid").command(request)
    settings = json.loads(next(f.content for f in droid.files if f.path.endswith("settings.json")))
    model = settings["customModels"][0]
    assert (model["baseUrl"], model["provider"]) == ("http://127.0.0.1:7000", "anthropic")
    assert model["apiKey"] == KEY_PLACEHOLDER
    assert droid.env["FACTORY_AIRGAP_ENABLED"] == "true"  # no call to Factory's servers
