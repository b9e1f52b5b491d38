"""What runs inside a Worker container: its main process, files written into it, the key of a
PO Worker's CLI, one turn of an agent's CLI, and the project's tests.

A Worker has no network. Its main process is the forwarder (deploy/images/base/files): it
exposes the host sockets mounted into the container (the task's gateway, which serves the model
API and the package registries, and its egress proxy; for a PO Worker, the API) on loopback
ports, which the agent's CLI, pip, uv, npm and the ``orchestrator`` CLI use as their base URLs,
and every HTTP client as its proxy. No credential enters the container's environment.
"""

from __future__ import annotations

import posixpath
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from core.contracts.agents import AgentEvent, AgentResult
from infra.agents.base import DEFAULT_HOME, AgentAdapter, AgentFile, AgentRequest
from infra.backing_services import ImageFor, start_backing_services
from infra.containers import ContainerRuntime
from infra.env_analyzer import MANIFEST, AnalysisError, read_manifest
from infra.errors import InfraError, refused
from infra.images import TOOLS_DIR, WORKER_HOME
from infra.test_reports import (
    OUTPUT_TAIL,
    TestReport,
    judged_without_junit,
    parse_junit,
    parse_unittest,
)

# Inside the Worker: the gateway socket's directory, and the forwarder's loopback port.
GATEWAY_MOUNT = "/run/orchestrator"
FORWARDER_PORT = 8788
MODEL_BASE_URL = f"http://127.0.0.1:{FORWARDER_PORT}"
# Inside the Worker: the egress proxy (gateway/egress.py) from the same mounted directory, and
# the environment that sends pip, git, curl, npm... to it; loopback (the gateway, the API) is
# reached directly.
EGRESS_PORT = 3128
EGRESS_URL = f"http://127.0.0.1:{EGRESS_PORT}"
EGRESS_ENV = {
    "HTTP_PROXY": EGRESS_URL,
    "HTTPS_PROXY": EGRESS_URL,
    "http_proxy": EGRESS_URL,
    "https_proxy": EGRESS_URL,
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
# The package caches through the same socket (gateway/app.py), and the environment that points
# pip, uv and npm at them: the tools work unchanged. No credential: a private upstream's token
# stays with the cache on the host.
REGISTRY_URL = f"{MODEL_BASE_URL}/registry"
PYPI_INDEX_URL = f"{REGISTRY_URL}/pypi/index/"
NPM_REGISTRY_URL = f"{REGISTRY_URL}/npm/"
REGISTRY_ENV = {
    "PIP_INDEX_URL": PYPI_INDEX_URL,
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "UV_PYTHON_DOWNLOADS": "never",  # uv uses the image's python3; it cannot download one
    "npm_config_registry": NPM_REGISTRY_URL,
    "npm_config_audit": "false",
    "npm_config_fund": "false",
    "npm_config_update_notifier": "false",
}
# uv's system configuration in the Worker (mounted read-only): ``uv pip`` installs through the
# registry path. uv's project commands (add, lock, sync, run) keep PyPI's own index, because a
# lockfile records the index and file URLs it was made with: one made against the registry path
# would name an address only a Worker has, and uv would call PyPI's lockfiles out of date. They
# reach PyPI through the egress proxy (its default allowlist names PyPI's two hosts), and the
# project's uv cache keeps what they fetched for its next task.
UV_CONFIG_TARGET = "/etc/uv/uv.toml"
UV_CONFIG = f'''# Written by the orchestrator: uv pip installs through the package cache.
[pip]
index-url = "{PYPI_INDEX_URL}"
'''
# The Worker's certificate authorities (the host's bundle, mounted over the image's when the
# settings name one), and the environment that makes uv and node read them as Debian's OpenSSL,
# curl and git already do.
CA_BUNDLE_TARGET = "/etc/ssl/certs/ca-certificates.crt"
CA_ENV = {
    "SSL_CERT_FILE": CA_BUNDLE_TARGET,
    "UV_SYSTEM_CERTS": "1",
    "NODE_EXTRA_CA_CERTS": CA_BUNDLE_TARGET,
}
# Inside a PO Worker: the API socket's directory, the forwarder's port for it, the CLI bundle,
# and the CLI's home (its key file).
API_MOUNT = "/run/orchestrator-api"
API_PORT = 8789
API_URL = f"http://127.0.0.1:{API_PORT}"
CLI_MOUNT = "/opt/orchestrator/cli"
CLI_HOME = posixpath.join(WORKER_HOME, ".orchestrator")
CLI_KEY_FILE = posixpath.join(CLI_HOME, "api_key")  # where Settings.read_api_key() looks
FORWARDER_WAIT_S = 20
# Run in the Worker: wait until something listens on each loopback port given.
_WAIT_FOR_PORT = f"""import socket, sys, time
deadline = time.monotonic() + {FORWARDER_WAIT_S}
for port in map(int, sys.argv[1:]):
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                sys.exit(f"nothing listens on 127.0.0.1:{{port}}: {{exc}}")
            time.sleep(0.05)
"""
# Where the scripted agent looks for its script when the Worker was made without one: a PO
# sends it with send_file (the adapter writes the same path when it has a script).
SCRIPTED_SCRIPT = posixpath.join(DEFAULT_HOME, "scripted-agent", "script.json")
# An agent turn's output kept for the result: the tail is what the parsers need.
MAX_LINES = 20_000
# The most of a manifest and of a JUnit report read from a Worker: a bigger one is cut there
# (a cut report is not valid XML, and the outcome falls back to the exit code).
MAX_MANIFEST_BYTES = 256 * 1024
MAX_JUNIT_BYTES = 8 * 1024 * 1024
_MISSING = 3  # the exit code of _READ_TEST_INPUTS without a manifest
# Run in the Worker: the test command ($2), then its JUnit XML ($1) read and removed, in one exec
# (each exec costs ~0.1 s). First the report an earlier run left at $1 goes (a crash between that
# run and its read), which must never pass for this one's: said on stderr with its own exit code
# when it cannot be removed. After the command, the marker line $3 on stdout, and when $1 is a
# regular file (a FIFO would block a read) the word "report" and at most $4 bytes of it: read,
# it goes, since the pull request commits what the workspace holds and the report is none of
# the agent's work. The command runs as a child of this script, in `timeout`'s process group,
# so a timeout still ends it and everything it started.
_CANNOT_REMOVE = "orchestrator: cannot remove the old test report"
_CANNOT_REMOVE_EXIT = 125
_RUN_TEST_COMMAND = f"""[ -z "$1" ] || rm -f -- "$1" 2>&1 || {{
    echo "{_CANNOT_REMOVE} $1" >&2
    exit {_CANNOT_REMOVE_EXIT}
}}
[ -n "$1" ] || exec sh -c "$2"
sh -c "$2"
status=$?
printf '\\n%s\\n' "$3"
if [ -f "$1" ]; then
    echo report
    head -c "$4" -- "$1"
    rm -f -- "$1"
fi
exit $status
"""
# The project's dependency caches inside the Worker: a host directory per project, shared by
# its tasks (uv's, pip's and npm's caches, and the Tester's environments).
DEPENDENCIES_MOUNT = "/var/cache/project-deps"
DEPENDENCY_CACHE_ENV = {
    "UV_CACHE_DIR": f"{DEPENDENCIES_MOUNT}/uv",
    "PIP_CACHE_DIR": f"{DEPENDENCIES_MOUNT}/pip",
    "npm_config_cache": f"{DEPENDENCIES_MOUNT}/npm",
}
# What the Tester needs before it runs anything, in one command (each exec costs ~0.1-0.2 s): the
# hash of the lockfile when the project's dependency directory is there to keep its environment,
# and whether that environment is installed (its first line: "<hash>", "<hash> installed", or
# "-"), then the manifest.
LOCKFILE = "uv.lock"
# Run in the Worker: install uv.lock's packages into the environment $1 once, through the
# registry path and its cache rather than from the files' PyPI URLs the lockfile names (which
# `uv sync` would fetch, uncached, through the egress proxy): its exact versions and hashes are
# exported and installed with uv pip.
_INSTALL_LOCKED = """set -e
[ -f "$1/.installed" ] && exit 0
requirements=$(mktemp)
uv export --quiet --frozen --no-emit-project --all-groups --output-file "$requirements"
[ -x "$1/bin/python" ] || uv venv --quiet "$1"
uv pip sync --quiet --python "$1/bin/python" "$requirements"
touch "$1/.installed"
"""
_READ_TEST_INPUTS = f"""lock=-
if [ -f {LOCKFILE} ] && [ -w {DEPENDENCIES_MOUNT} ]; then
    lock=$(sha256sum < {LOCKFILE} | cut -c1-16)
    [ -f "{DEPENDENCIES_MOUNT}/environments/py-$lock/.installed" ] && lock="$lock installed"
fi
echo "$lock"
[ -f "$1" ] || exit {_MISSING}
head -c "$2" -- "$1"
"""


def forwarder_command(routes: list[tuple[int, str]], multi: bool) -> list[str]:
    """The Worker's main process: ``sleep`` when nothing is forwarded, else the forwarder on
    each (loopback port, socket inside the Worker) route.

    One route without API access keeps the single-route form it always had."""
    if not routes:
        return ["sleep", "infinity"]
    command = ["python3", f"{TOOLS_DIR}/forwarder.py"]
    if not multi and len(routes) == 1:
        ((port, socket),) = routes
        return [*command, "--listen", f"127.0.0.1:{port}", "--socket", socket]
    for port, socket in routes:
        command += ["--route", f"127.0.0.1:{port}={socket}"]
    return command


async def write_file(
    runtime: ContainerRuntime, worker_id: str, path: str, content: str, mode: int
) -> None:
    """Write a file into the Worker (relative paths under /workspace), its directory first."""
    target = path if posixpath.isabs(path) else posixpath.join("/workspace", path)
    target = posixpath.normpath(target)
    made = await runtime.exec(
        worker_id, ["mkdir", "-p", posixpath.dirname(target)], workdir="/", timeout=30
    )
    if made.exit_code != 0:
        raise refused(
            f"cannot make the directory of {target}: {made.stderr.strip()}", "BadWorkerInput"
        )
    await runtime.put_file(worker_id, target, content.encode(), mode)


async def write_agent_files(
    runtime: ContainerRuntime, worker_id: str, files: list[AgentFile], home: str
) -> None:
    """An agent's files: those in its home (its settings, a script) in one archive with the
    directories they need, which only the orchestrator and the agent write; any other one as
    :func:`write_file` does."""

    def in_home(path: str) -> bool:
        path = posixpath.normpath(path)
        return posixpath.isabs(path) and path != home and path.startswith(home.rstrip("/") + "/")

    own = {
        posixpath.relpath(posixpath.normpath(f.path), home): (f.content.encode(), f.mode)
        for f in files
        if in_home(f.path)
    }
    if own:
        await runtime.put_tree(worker_id, home, own)
    for file in files:
        if not in_home(file.path):
            await write_file(runtime, worker_id, file.path, file.content, file.mode)


async def give_cli_key(runtime: ContainerRuntime, worker_id: str, key: str) -> None:
    """The ``orchestrator`` CLI's key as a 0600 file of the Worker's user where the CLI looks,
    once the forwarder to the API listens (the CLI's first call must not find it closed)."""
    made = await runtime.exec(
        worker_id, ["mkdir", "-p", "-m", "700", CLI_HOME], workdir="/", timeout=30
    )
    if made.exit_code != 0:
        raise InfraError(f"cannot make {CLI_HOME}: {made.stderr.strip()}")
    await runtime.put_file(worker_id, CLI_KEY_FILE, f"{key}\n".encode(), 0o600)
    # The container's main process has only just started.
    waited = await runtime.exec(
        worker_id,
        ["python3", "-I", "-S", "-c", _WAIT_FOR_PORT, str(API_PORT)],
        workdir="/",
        timeout=FORWARDER_WAIT_S + 10,
    )
    if waited.exit_code != 0:
        raise InfraError(f"the Worker's forwarder does not listen: {waited.stderr.strip()[-500:]}")


async def run_agent_turn(
    runtime: ContainerRuntime,
    worker_id: str,
    agent: str,
    adapter: AgentAdapter,
    request: AgentRequest,
    *,
    timeout_s: float,
    scripted_default: bool = False,
    on_event: Callable[[AgentEvent], None] | None = None,
    on_line: Callable[[str, int], None] | None = None,
) -> AgentResult:
    """One run of the agent's CLI in the Worker, its output folded into one result.

    ``on_event`` gets the CLI's live events (edits, commands, messages) as its output is parsed;
    ``on_line`` (stream, lines so far) every output line, e.g. to heartbeat.
    ``scripted_default``: the scripted agent reads the script a PO sent as a file.
    """
    command = adapter.command(request)
    env = dict(command.env)
    if scripted_default:
        env.setdefault("SCRIPTED_AGENT_SCRIPT", SCRIPTED_SCRIPT)
    await write_agent_files(runtime, worker_id, command.files, request.home)
    lines: list[str] = []

    def take_line(stream: str, line: str) -> None:
        if stream == "stdout":
            lines.append(line)
            del lines[:-MAX_LINES]
            if on_event is not None:
                for event in adapter.parse_line(line):
                    on_event(event)
        if on_line is not None:
            on_line(stream, len(lines))

    result = await runtime.exec(
        worker_id,
        command.argv,
        env=env,
        workdir=command.cwd,
        timeout=timeout_s,
        on_line=take_line,
        # A turn orphaned by a killed worker process must not edit alongside this one.
        exclusive="agent-turn",
    )
    if result.timed_out:
        return AgentResult(
            status="failed", raw_error=f"the agent ran past its {timeout_s:g} s limit"
        )
    return adapter.result(lines, result.exit_code, workdir=command.cwd)


def environment_for(lock_hash: str) -> str:
    """The project's environment for one lockfile: installed once, found again by the next round
    and the next task of the project with the same lockfile."""
    return f"{DEPENDENCIES_MOUNT}/environments/py-{lock_hash}"


def tester_environment(lock_hash: str | None) -> dict[str, str]:
    """What the test command's uv is given once the lockfile's packages are installed: their
    environment, and no network (nothing is left to fetch)."""
    if lock_hash is None:
        return {}
    return {"UV_PROJECT_ENVIRONMENT": environment_for(lock_hash), "UV_OFFLINE": "1"}


def write_uv_config(directory: Path) -> Path:
    """The file mounted at ``UV_CONFIG_TARGET`` in every Worker, (re)written when it differs."""
    path = directory / "uv.toml"
    if not path.is_file() or path.read_text() != UV_CONFIG:
        directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(UV_CONFIG)
        partial.replace(path)
    return path


async def install_locked(
    runtime: ContainerRuntime, worker_id: str, lock_hash: str, timeout_s: float
) -> str | None:
    """Install the lockfile's packages, exactly (versions and hashes), into its environment
    through the registry path, unless an earlier run did; why it failed, else None."""
    done = await runtime.exec(
        worker_id,
        ["sh", "-c", _INSTALL_LOCKED, "sh", environment_for(lock_hash)],
        timeout=timeout_s,
    )
    if done.exit_code == 0 and not done.timed_out:
        return None
    why = f"ran past {timeout_s:g} s" if done.timed_out else f"exit {done.exit_code}"
    return f"{why}: {(done.stdout + done.stderr).strip()[-1500:]}"


async def _read_test_inputs(
    runtime: ContainerRuntime, worker_id: str
) -> tuple[str | None, str | None, bool]:
    """The manifest's text (None without one), the lockfile's hash (None without one) and
    whether its environment is installed."""
    done = await runtime.exec(
        worker_id,
        ["sh", "-c", _READ_TEST_INPUTS, "sh", MANIFEST, str(MAX_MANIFEST_BYTES)],
        timeout=60,
    )
    first, _, manifest = done.stdout.partition("\n")
    if done.timed_out or done.exit_code not in (0, _MISSING) or not first:
        raise InfraError(f"cannot read {MANIFEST} in the Worker: {done.stderr.strip()[-500:]}")
    lock_hash, _, installed = first.partition(" ")
    return (
        manifest if done.exit_code == 0 else None,
        lock_hash if lock_hash != "-" else None,
        installed == "installed",
    )


async def run_tests(
    runtime: ContainerRuntime,
    worker_id: str,
    *,
    timeout_s: float,
    image_for: ImageFor | None = None,
) -> TestReport:
    """The project's tests in its Worker, as its manifest's ``test`` section says (``make test``
    without one), and their outcome: from the JUnit XML the command writes when the manifest
    names it, else from the command's output and exit code.

    The backing services the manifest names are started first (or found, from an earlier
    round) beside the Worker, and the command gets their URLs in its environment; ``image_for``
    gives a service's image. Their start counts in ``timeout_s``.

    A manifest that is invalid is reported as a failed run saying why: the agent that wrote it
    can mend it."""
    started = time.monotonic()
    text, lock_hash, installed = await _read_test_inputs(runtime, worker_id)
    try:
        manifest = read_manifest(text)
    except AnalysisError as exc:
        return TestReport(passed=False, exit_code=-1, command="", summary=f"no tests ran: {exc}")
    spec = manifest.test
    if lock_hash is not None and not installed:
        failed = await install_locked(runtime, worker_id, lock_hash, timeout_s)
        if failed is not None:
            return TestReport(
                passed=False,
                exit_code=-1,
                command=spec.command,
                summary=f"no tests ran: the lockfile's packages could not be installed ({failed})",
            )
    env = tester_environment(lock_hash)
    if manifest.backing_services:
        if image_for is None:
            raise InfraError("this caller cannot start backing services", retryable=False)
        env |= await start_backing_services(
            runtime, worker_id, manifest.backing_services, image_for
        )
    marker = f"orchestrator-junit-{secrets.token_hex(8)}"
    done = await runtime.exec(
        worker_id,
        test_command_argv(spec.command, spec.junit, marker),
        # A round rewrites files within the same second: no stale .pyc may shadow them.
        env={**env, "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=max(1.0, timeout_s - (time.monotonic() - started)),
    )
    if done.exit_code == _CANNOT_REMOVE_EXIT and _CANNOT_REMOVE in done.stderr:
        return TestReport(
            passed=False,
            exit_code=-1,
            command=spec.command,
            summary=f"no tests ran: the old {spec.junit} cannot be removed: "
            f"{done.stdout.strip()[-300:] or 'rm failed'}",
        )
    stdout, xml = _split_report(done.stdout, marker)
    output = stdout + done.stderr
    if done.timed_out:
        return TestReport(
            passed=False,
            exit_code=done.exit_code,
            command=spec.command,
            summary=f"the tests ran past their {timeout_s:g} s limit",
            output=output[-OUTPUT_TAIL:],
        )
    if spec.junit is None:
        report = parse_unittest(output, done.exit_code)
        report.command = spec.command
        return report
    if xml is None or len(xml.encode()) >= MAX_JUNIT_BYTES:
        why = (
            f"the test command wrote no JUnit XML at {spec.junit}"
            if xml is None
            else f"the JUnit XML at {spec.junit} is larger than {MAX_JUNIT_BYTES >> 20} MB"
        )
        return judged_without_junit(output, done.exit_code, why, command=spec.command)
    return parse_junit(xml, done.exit_code, output, command=spec.command)


def test_command_argv(command: str, junit: str | None, marker: str) -> list[str]:
    """How the Tester runs the manifest's test command in the Worker: with the removal of an old
    JUnit XML at ``junit`` first, and the new one printed after ``marker`` once it ends."""
    limit = str(MAX_JUNIT_BYTES)
    return ["sh", "-c", _RUN_TEST_COMMAND, "sh", junit or "", command, marker, limit]


def _split_report(stdout: str, marker: str) -> tuple[str, str | None]:
    """The test command's own output, and the JUnit XML printed after the marker (None when
    the command wrote none, or the script never got there)."""
    output, found, after = stdout.rpartition(f"\n{marker}\n")
    if not found:
        return stdout, None
    kind, _, xml = after.partition("\n")
    return output, xml if kind == "report" else None
