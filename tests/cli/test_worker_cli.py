"""``orchestrator worker run`` refuses what would make a host take work it cannot do, before it
connects to anything. (Running it for real: tests/workflows/test_worker_hosts.py.)"""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from cli.main import app
from cli.worker import VARIABLE


@pytest.fixture(autouse=True)
def _no_capabilities_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VARIABLE, raising=False)


def test_an_unknown_capability_is_a_usage_error() -> None:
    result = CliRunner().invoke(
        app, ["worker", "run", "--capabilities", "containers,gpu", "--json"]
    )
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["message"] == "unknown capability 'gpu'"
    assert error["detail"] == "known: containers, ansible"


def test_a_containers_host_without_a_container_engine_does_not_start() -> None:
    result = CliRunner().invoke(
        app,
        ["worker", "run", "--capabilities", "containers", "--json"],
        env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
    )
    assert result.exit_code == 4
    error = json.loads(result.stdout)["error"]
    assert error["message"].startswith("no Docker API answers at unix:///nonexistent/docker.sock")
    assert "leave out the containers capability" in error["detail"]
    # What it was asked for was the worker's, not this process's: the next command's settings
    # (in a test session, every later test's) still have both capabilities.
    assert VARIABLE not in os.environ
