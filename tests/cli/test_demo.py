"""`orchestrator demo`: its scripted feature passes the project template's tests, and it asks for
the agent the environment's model keys call for, on a project from the app template (against a
real API process; the whole demo on the stack is in tests/stack/test_up_smoke.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import copier
import pytest

from cli.demo import ANTHROPIC_KEYS, OPENAI_KEYS, choose_agent
from cli.demo_notes import SPEC, notes_script
from cli.demo_script import DEMO_FILES, demo_script
from cli.main import app
from core.enums import ProjectTemplate
from core.paths import TEMPLATES_DIR
from infra.agents.scripted import RUNNER_SOURCE
from tests.cli.conftest import FOREIGN, Api, Cli

MODEL_KEYS = (*ANTHROPIC_KEYS, *OPENAI_KEYS, "ORCHESTRATOR_DEFAULT_AGENT")
NEW_TESTS = ("test_greets_by_name", "test_the_route_answers", "test_greets_over_http")


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def scaffolded(path: Path, modules: list[str]) -> Path:
    """The project the scaffold stage makes: the template rendered and committed."""
    data = {"project_name": "greeter", "description": "A demo project.", "modules": modules}
    copier.run_copy(str(TEMPLATES_DIR / "service"), str(path), data=data, defaults=True, quiet=True)
    git(path, "init", "--quiet", "--initial-branch=main")
    git(path, "add", "--all")
    git(path, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "Scaffold")
    return path


def play(repo: Path, script: Path) -> dict[str, Any]:
    """One round of the scripted agent, run as the Worker runs it; its final result line."""
    done = subprocess.run(
        ["python3", str(RUNNER_SOURCE), "--script", str(script), "--workdir", str(repo), "--", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize("modules", [["backend"], ["backend", "tg_bot"]])
def test_the_scripted_round_passes_the_service_template_tests(
    tmp_path: Path, modules: list[str]
) -> None:
    """The ``service`` template's demo round; the ``app`` template's runs through the whole
    pipeline in tests/workflows/test_engineering_app.py."""
    repo = scaffolded(tmp_path / "repo", modules)
    script = tmp_path / "script.json"
    script.write_text(json.dumps(demo_script()))

    result = play(repo, script)
    assert result["status"] == "completed" and result["commit"]
    assert git(repo, "log", "-1", "--format=%s") == "Add GET /greet/<name>"
    changed = git(repo, "diff", "--name-only", "HEAD~1", "HEAD").splitlines()
    assert sorted(changed) == sorted(DEMO_FILES)
    # app/server.py is the scaffolded one plus the wiring: one import and a three-line hook.
    numstat = git(repo, "diff", "--numstat", "HEAD~1", "HEAD", "--", "app/server.py")
    assert numstat.split()[:2] == ["4", "0"]

    tests = subprocess.run(
        ["make", "test", f"PYTHON={sys.executable}"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tests.returncode == 0, tests.stderr
    passed = [line for line in tests.stderr.splitlines() if line.endswith("... ok")]
    for name in NEW_TESTS:
        assert any(line.startswith(f"{name} ") for line in passed), tests.stderr


@pytest.mark.parametrize(
    ("env", "agent"),
    [
        ({}, "scripted"),
        ({"OPENAI_API_KEY": "k"}, "codex"),
        ({"ORCHESTRATOR_OPENAI_API_KEY": "k"}, "codex"),
        ({"ANTHROPIC_API_KEY": "k"}, "claude"),
        ({"ANTHROPIC_API_KEY": "k", "OPENAI_API_KEY": "k"}, "claude"),
        ({"ANTHROPIC_API_KEY": ""}, "scripted"),
    ],
)
def test_the_agent_follows_the_model_keys(env: dict[str, str], agent: str) -> None:
    chosen = choose_agent(env)
    options = chosen.options(ProjectTemplate.app, "notes")
    assert chosen.name == options["agent"] == agent
    assert ("script" in options) == (agent == "scripted")


def run_demo(cli: Cli, api: Api, **env: str) -> tuple[int, Any, str]:
    """The demo against the test's API (no bridge: the task stays QUEUED, so it times out)."""
    merged: dict[str, str | None] = dict.fromkeys((*FOREIGN, *MODEL_KEYS), None)
    merged.update(cli.env)
    merged.update(ORCHESTRATOR_API_URL=api.url, **env)
    result = cli.runner.invoke(
        app,
        ["demo", "--timeout", "1", "--json"],
        env=merged,
        catch_exceptions=False,
    )
    return result.exit_code, json.loads(result.stdout), result.stderr


@pytest.mark.parametrize(
    ("env", "agent"), [({}, "scripted"), ({"ANTHROPIC_API_KEY": "k"}, "claude")]
)
def test_the_demo_starts_its_task_with_the_agent(
    cli: Cli, api: Api, env: dict[str, str], agent: str
) -> None:
    code, out, notes = run_demo(cli, api, **env)
    assert code == 1, out
    error = out["error"]
    assert error["timed_out"] is True and error["status"] == "QUEUED"
    task = cli.json("task", "show", error["task_id"])
    options = task["details"]["engineering"]
    assert options["agent"] == agent
    project = cli.json("project", "show", task["project_id"])
    assert (project["template"], project["modules"]) == ("app", ["backend"])
    assert task["spec"] == SPEC
    if agent == "scripted":
        assert options["script"] == notes_script(project["name"])
        assert "python-slugify" in notes
        assert "deterministic scripted agent stands in for a real coding agent" in notes
        assert "ANTHROPIC_API_KEY or OPENAI_API_KEY" in notes
    else:
        assert "script" not in options and "Claude Code" in notes
    assert f"engineering-{error['task_id']}" in notes  # the run's Web UI link, at once
