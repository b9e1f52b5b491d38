"""The CLI starts quickly because a command imports what it uses: building the command tree, and
``--help``, import neither the HTTP client, nor the settings, nor the contracts' pydantic models;
``engineering start`` imports the client and the settings but still no contract model and no HTTP
library; and the client of an http:// API loads no CA bundle.

The guard that does not depend on timing; bench/cli_startup.py measures the time.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

from core.paths import REPO_ROOT

# What the commands that use them import (or, for the stack's packages, only `up` and the like).
NOT_AT_IMPORT = (
    "httpx", "httpcore", "pydantic", "pydantic_core", "pydantic_settings", "rich", "click",
    "core.settings", "core.contracts", "cli.client", "stack", "activities", "docker",
)  # fmt: skip
NOT_FOR_HELP = ("httpx", "pydantic_settings", "core.settings", "core.contracts", "cli.client")
# Runs the CLI as its entry point does and reports, at exit, every module it imported.
PROBE = (
    "import atexit, json, sys\n"
    "atexit.register(lambda: print('MODULES', json.dumps(sorted(sys.modules)), file=sys.stderr))\n"
    "sys.argv[0] = 'orchestrator'\n"
    "from cli.main import main\n"
    "main()\n"
)


def loaded(modules: list[str], names: tuple[str, ...]) -> list[str]:
    """The modules of ``names`` (packages with their submodules) among ``modules``."""
    return sorted(m for m in modules if any(m == n or m.startswith(f"{n}.") for n in names))


def environment(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "ALLOWED_COMMANDS" not in k}
    # Nothing listens on the discard port: a command that calls the API fails fast (exit 4).
    return {**env, "ORCHESTRATOR_HOME": str(tmp_path), "ORCHESTRATOR_API_URL": "http://127.0.0.1:9"}


def run_cli(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=REPO_ROOT,
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    reports = [line for line in done.stderr.splitlines() if line.startswith("MODULES ")]
    assert reports, done.stderr
    return done, json.loads(reports[-1].removeprefix("MODULES "))


def test_importing_the_cli_imports_no_command_dependencies(tmp_path: Path) -> None:
    code = "import json, sys, cli.main; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    modules = json.loads(done.stdout)
    assert "cli.engineering" in modules and "cli.deploy" in modules  # the whole tree is there
    assert loaded(modules, NOT_AT_IMPORT) == []


def test_help_works_without_the_client_the_settings_or_the_contracts(tmp_path: Path) -> None:
    done, modules = run_cli(tmp_path, "--help")
    assert done.returncode == 0, done.stderr
    assert "Usage: orchestrator" in done.stdout
    for group in ("engineering", "deploy", "task", "project", "server", "secret", "respond"):
        assert group in done.stdout
    assert loaded(modules, NOT_FOR_HELP) == []

    done, modules = run_cli(tmp_path, "engineering", "start", "--help")
    assert done.returncode == 0, done.stderr
    assert "--agent" in done.stdout and "claude" in done.stdout
    assert loaded(modules, NOT_FOR_HELP) == []


def test_engineering_start_imports_the_client_but_no_contract_model_nor_http_library(
    tmp_path: Path,
) -> None:
    args = ("engineering", "start", "--project", "P", "--spec", "S", "--json")
    done, modules = run_cli(tmp_path, *args)
    assert done.returncode == 4, (done.stdout, done.stderr)
    assert "cannot reach the API" in json.loads(done.stdout)["error"]["message"]
    assert {"cli.client", "core.settings"} <= set(modules)
    assert loaded(modules, ("core.contracts", "stack", "activities", "httpx", "httpcore")) == []


def test_an_http_api_costs_no_ca_bundle_and_https_checks_certificates() -> None:
    from cli.client import tls

    for url in ("http://127.0.0.1:8710", "HTTP://api.internal"):
        assert tls(url) is None
    context = tls("https://orchestrator.example")
    # Checks stay on: a certificate the usual CA bundle does not vouch for fails the request.
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
