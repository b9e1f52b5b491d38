"""Capture the real output of the agent CLIs into tests/infra/agents/fixtures (the parser tests
read it).

    .venv/bin/python -m tests.infra.agents.capture [claude|codex|droid ...]

Runs the pinned ``claude``, ``codex`` and ``droid`` (or those named) against the stand-ins in a
fixed workspace path (so the fixtures and their tests agree on it) and saves stdout untouched.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from infra.agents import ClaudeAdapter, CodexAdapter, DroidAdapter
from infra.agents.base import AgentAdapter, AgentRequest
from testing.agents import install_clis, run_agent
from testing.standins.anthropic_api import AnthropicStandIn
from testing.standins.openai_api import OpenAIStandIn
from testing.standins.recording import FileWrite, ModelScript
from testing.standins.server import serve

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(tempfile.gettempdir()) / "orchestrator-agent-capture"
WORKSPACE = ROOT / "workspace"
PROMPT = "Add a greet function with a test."

SCRIPT = ModelScript(
    writes=[
        FileWrite("app/greet.py", "def greet(name):\n    return f'hello {name}'\n"),
        FileWrite("tests/test_greet.py", "from app.greet import greet\n"),
    ],
    final_text="Added greet() and its test.",
    input_tokens=150,
    output_tokens=25,
)
FAILING = ModelScript(error=(400, "task budget exceeded"))


def _capture(name: str, adapter: AgentAdapter, url: str) -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    WORKSPACE.mkdir(parents=True)
    request = AgentRequest(
        prompt=PROMPT, model_base_url=url, workdir=str(WORKSPACE), home=str(ROOT / "home")
    )
    run = run_agent(adapter, request)
    (FIXTURES / f"{name}.jsonl").write_text("\n".join(run.lines) + "\n")
    print(f"{name}: exit {run.exit_code}, {len(run.lines)} lines, {run.seconds:.2f}s")


def _capture_anthropic(name: str, adapter: AgentAdapter) -> None:
    anthropic = AnthropicStandIn(SCRIPT)
    with serve(anthropic.app) as url:
        _capture(f"{name}_completed", adapter, url)
        anthropic.script = FAILING
        _capture(f"{name}_api_error", adapter, url)


def _capture_codex(codex: CodexAdapter) -> None:
    for edit_with in ("apply_patch", "shell"):
        openai = OpenAIStandIn(SCRIPT, edit_with=edit_with)  # type: ignore[arg-type]
        with serve(openai.app) as url:
            _capture(f"codex_{edit_with}", codex, url)
    with serve(OpenAIStandIn(FAILING).app) as url:
        _capture("codex_api_error", codex, url)


def main(agents: list[str]) -> None:
    FIXTURES.mkdir(exist_ok=True)
    clis = install_clis()
    if "claude" in agents:
        _capture_anthropic("claude", ClaudeAdapter(str(clis["claude"])))
    if "codex" in agents:
        _capture_codex(CodexAdapter(str(clis["codex"])))
    if "droid" in agents:  # droid's custom model speaks the Anthropic Messages API here
        _capture_anthropic("droid", DroidAdapter(str(clis["droid"])))
    shutil.rmtree(ROOT, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["claude", "codex", "droid"])
