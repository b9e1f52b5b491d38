"""Helpers for the Ansible tests: deploy, stop and undeploy the test app, probe it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from core.contracts.deploy import DatabaseSettings, EdgeSettings
from infra.ansible import AnsibleRunner, OnEvent, PlaybookRun, SshTarget
from infra.release_archives import archive_vars, export_locked_requirements
from testing.servers import free_port

APP = "hello"

# A Telegram bot of the standard library alone (nothing to install), polling as the app
# template's starts (deleteWebhook, then getUpdates); like aiogram, it keeps trying when the Bot
# API refuses it.
STDLIB_BOT = """import json, os, time, urllib.request
base = os.environ.get("TELEGRAM_API_URL") or "https://api.telegram.org"
url = base.rstrip("/") + "/bot" + os.environ["TELEGRAM_BOT_TOKEN"]

def call(method, **params):
    request = urllib.request.Request(
        f"{url}/{method}", json.dumps(params).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)["result"]

offset, started = 0, False
while True:
    try:
        if not started:
            started = call("deleteWebhook")
        for update in call("getUpdates", offset=offset, timeout=1):
            offset = update["update_id"] + 1
    except OSError as error:
        print("the Bot API refused:", error, flush=True)
        time.sleep(1)
"""


def release_archive(repo: Path, ref: str, directory: Path) -> Path:
    """What the deploy pipeline ships: `git archive` of `ref`, a .tar.gz on the controller, with
    the requirements its uv lockfile pins."""
    archive = directory / f"{ref.replace('/', '-')}.tar.gz"
    subprocess.run(
        ["git", "archive", "--format=tar.gz", "-o", str(archive), ref],
        cwd=repo,
        check=True,
        capture_output=True,
    )
    export_locked_requirements(archive)
    return archive


_EDGES: dict[Path, EdgeSettings] = {}


def edge_of(apps_root: Path) -> EdgeSettings:
    """The edge of the test target whose apps live in ``apps_root``: ports of its own, chosen
    once per root, on loopback, with Caddy's internal CA."""
    if apps_root not in _EDGES:
        _EDGES[apps_root] = EdgeSettings(
            http_port=free_port(),
            https_port=free_port(),
            admin_port=free_port(),
            bind="127.0.0.1",
            tls="internal",
        )
    return _EDGES[apps_root]


_DATABASES: dict[Path, DatabaseSettings] = {}


def database_of(apps_root: Path) -> DatabaseSettings:
    """The PostgreSQL cluster of the test target whose apps live in ``apps_root``: a port of its
    own, chosen once per root."""
    if apps_root not in _DATABASES:
        _DATABASES[apps_root] = DatabaseSettings(port=free_port())
    return _DATABASES[apps_root]


def database_dir(apps_root: Path) -> Path:
    """Where release.py keeps the cluster's data (and its socket) for ``apps_root``: as root,
    under /var/lib/postgresql (PostgreSQL runs as the postgres user), else beside the apps."""
    if os.geteuid() != 0:
        return apps_root / ".postgres" / "data"
    digest = hashlib.sha256(str(apps_root.resolve()).encode()).hexdigest()[:12]
    return Path("/var/lib/postgresql/orchestrator") / digest


def cluster_sql(apps_root: Path, sql: str) -> str:
    """``sql`` run by psql as the cluster's superuser, by its socket (unaligned, tuples only)."""
    superuser = "postgres" if os.geteuid() == 0 else None
    argv = [
        "/usr/lib/postgresql/15/bin/psql", "-X", "-At", "-v", "ON_ERROR_STOP=1",
        "-h", str(database_dir(apps_root)), "-p", str(database_of(apps_root).port),
        "-d", "postgres", "-c", sql,
    ]  # fmt: skip
    if superuser:
        argv = ["runuser", "-u", superuser, "--", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, cwd="/", check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def edge_ca(apps_root: Path) -> Path:
    """The root certificate of the edge's internal CA, which a client verifies its names with."""
    return apps_root / ".edge" / "data" / "pki" / "authorities" / "local" / "root.crt"


def deploy(
    runner: AnsibleRunner,
    target: SshTarget,
    repo: Path,
    apps_root: Path,
    release: str,
    port: int,
    ref: str = "main",
    secret_env: dict[str, str] | None = None,
    on_event: OnEvent | None = None,
    extravars: Mapping[str, Any] | None = None,
    cancel: threading.Event | None = None,
    database_url: str | None = None,
    release_command: str = "",
    timeout_s: int = 120,
) -> PlaybookRun:
    """Deploy `ref` of `repo` as `release` on `port`; `extravars` override the defaults. With
    `database_url`, the app's database on the root's cluster (`database_of`), that URL in its
    DATABASE_URL (a secret, as the orchestrator passes it)."""
    if database_url:
        secret_env = {**(secret_env or {}), "DATABASE_URL": database_url}
    with tempfile.TemporaryDirectory(prefix="o-archive-") as directory:
        archive = release_archive(repo, ref, Path(directory))
        variables = {
            "app_name": APP,
            "release": release,
            **archive_vars(archive),
            "app_port": port,
            "start_command": "python3 -m app",
            "env": {"HOST": "127.0.0.1", "LOG_LEVEL": "INFO"},
            "apps_root": str(apps_root),
            # A broken release should fail in a few seconds, not thirty.
            "health_retries": 3,
            "health_delay": 0.3,
            "edge": edge_of(apps_root).playbook_vars(),
            "release_command": release_command,
            **(
                {"database": {"env": "DATABASE_URL", "port": database_of(apps_root).port}}
                if database_url
                else {}
            ),
            **(extravars or {}),
        }
        secrets = {"secret_env": secret_env} if secret_env else None
        return runner.run(
            "deploy.yml", target, variables, secrets, on_event, timeout_s=timeout_s, cancel=cancel
        )


def stop(runner: AnsibleRunner, target: SshTarget, apps_root: Path) -> PlaybookRun:
    return runner.run("stop.yml", target, {"app_name": APP, "apps_root": str(apps_root)})


def undeploy(
    runner: AnsibleRunner,
    target: SshTarget,
    apps_root: Path,
    app_name: str = APP,
    drop_data: bool = False,
) -> PlaybookRun:
    variables: dict[str, Any] = {"app_name": app_name, "apps_root": str(apps_root)}
    if drop_data:
        variables["drop_data"] = True
    return runner.run("undeploy.yml", target, variables)


def answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def pid_of(app_dir: Path, release: str) -> int:
    """The release's supervisor (appctl.sh), which leads its process group."""
    return int((app_dir / "run" / f"{release}.pid").read_text())


def child_of(app_dir: Path, release: str) -> int:
    """The release's app process, as its supervisor started it last."""
    return int((app_dir / "run" / f"{release}.child").read_text())


def release_processes(app_dir: Path, release: str) -> set[int]:
    """The release's supervisor and its app."""
    return {pid_of(app_dir, release), child_of(app_dir, release)}


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def processes_in(directory: Path) -> set[int]:
    """Live processes whose working directory is `directory` or in it (a deleted one still
    counts): under an app's directory, its releases' supervisors and apps."""
    prefix = str(directory) + os.sep
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:  # gone, or another user's
            continue
        if (cwd == str(directory) or cwd.startswith(prefix)) and pid_alive(int(entry.name)):
            found.add(int(entry.name))
    return found


def end_apps(root: Path) -> None:
    """SIGKILL every app started under the apps root ``root`` and its edge (supervised the same
    way, in ``.edge``): what the pid files name, and a release whose pid file is gone (a test
    that failed halfway through a crash); then its PostgreSQL cluster and its data, and the
    containers its releases ran as."""
    end_cluster(root)
    names = [path.read_text().strip() for path in root.glob("*/run/*.container")]
    if names and shutil.which("podman"):
        subprocess.run(
            ["podman", "rm", "--force", "--ignore", "--time", "0", *names],
            capture_output=True,
            check=False,
        )
    for pid_file in root.glob("*/run/*.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    for pid in processes_in(root):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def end_cluster(root: Path) -> None:
    """The cluster's supervisor killed (so nothing starts postgres again), postgres shut down
    at once (SIGQUIT: it ends its sessions and frees its shared memory, which a SIGKILL would
    leave behind), and its data directory removed."""
    run = root / ".postgres" / "run"
    with contextlib.suppress(OSError, ValueError, ProcessLookupError):
        os.kill(int((run / "postgres.pid").read_text()), signal.SIGKILL)
    with contextlib.suppress(OSError, ValueError, ProcessLookupError):
        postgres = int((run / "postgres.child").read_text())
        os.kill(postgres, signal.SIGQUIT)
        deadline = time.monotonic() + 10
        while pid_alive(postgres) and time.monotonic() < deadline:
            time.sleep(0.05)  # a bounded wait for a process we cannot wait() on (not ours)
        if pid_alive(postgres):
            os.kill(postgres, signal.SIGKILL)
    data = database_dir(root)
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(data.with_name(data.name + ".init"), ignore_errors=True)
