"""Capture the real output of the agent CLIs into tests/infra/agents/fixtures (the parser tests
read it).

    .venv/bin/python -m tests.infra.agents.capture

Runs the pinned ``claude`` and ``codex`` against the stand-ins in a fixed workspace path (so the
fixtures and their tests agree on it) and saves stdout untouched.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from infra.agents import ClaudeAdapter, CodexAdapter
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


def main() -> None:
    FIXTURES.mkdir(exist_ok=True)
    clis = install_clis()
    claude, codex = ClaudeAdapter(str(clis["claude"])), CodexAdapter(str(clis["codex"]))
    anthropic = AnthropicStandIn(SCRIPT)
    with serve(anthropic.app) as url:
        _capture("claude_completed", claude, url)
        anthropic.script = FAILING
        _capture("claude_api_error", claude, url)
    for edit_with in ("apply_patch", "shell"):
        openai = OpenAIStandIn(SCRIPT, edit_with=edit_with)  # type: ignore[arg-type]
        with serve(openai.app) as url:
            _capture(f"codex_{edit_with}", codex, url)
    with serve(OpenAIStandIn(FAILING).app) as url:
        _capture("codex_api_error", codex, url)
    shutil.rmtree(ROOT, ignore_errors=True)


if __name__ == "__main__":
    main()
