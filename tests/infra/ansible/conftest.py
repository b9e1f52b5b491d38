"""Fixtures for Ansible tests: a real sshd on loopback, the runner, a deployable app repository."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import copier
import pytest

from core.paths import TEMPLATES_DIR
from infra.ansible import AnsibleRunner, SshTarget
from testing.apps import end_apps
from testing.locked_app import write_locked_project
from testing.ssh_host import SshHost

# The `broken` branch starts, logs why it cannot serve, and exits: its health check must fail.
BROKEN_MAIN = """import sys
print("boom: the broken release cannot start", file=sys.stderr, flush=True)
sys.exit(3)
"""


# The `deps` branch needs a package from PyPI to start; `bad-deps` asks for one PyPI does not have.
DEPENDENCY = "six==1.17.0"
MISSING_DEPENDENCY = "orchestrator-no-such-package-3f9a==1.0"


# The database app: notes in PostgreSQL through psycopg (from PyPI), its table made by its
# release command (`python -m app.migrate`), its URL in DATABASE_URL. A request whose database
# does not answer gets a 503, so a test waits for it to answer again.
DATABASE_DEPENDENCY = "psycopg[binary]==3.2.10"
NOTES_MAIN = """import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg

URL = os.environ["DATABASE_URL"]


class Notes(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            return self.answer(200, {"status": "ok"})
        self.with_database(lambda db: [row[0] for row in db.execute("SELECT body FROM notes")])

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        insert = "INSERT INTO notes (body) VALUES (%s) RETURNING body"
        self.with_database(lambda db: db.execute(insert, (body,)).fetchone()[0])

    def with_database(self, work):
        try:
            with psycopg.connect(URL, connect_timeout=3) as db:
                self.answer(200, {"notes": work(db)})
        except psycopg.Error as error:
            self.answer(503, {"error": str(error)})

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


address = (os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"]))
ThreadingHTTPServer(address, Notes).serve_forever()
"""
NOTES_MIGRATE = """import os

import psycopg

with psycopg.connect(os.environ["DATABASE_URL"]) as db:
    db.execute("CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, body text NOT NULL)")
print("migrated")
"""


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


COMMIT = ("-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm")


def commit_all(repo: Path, message: str) -> None:
    """Every change in ``repo`` committed on its branch."""
    git(repo, "add", "--all")
    git(repo, *COMMIT, message)


def new_repository(repo: Path, message: str) -> Path:
    """``repo``'s files committed as the first commit of a new repository on ``main``."""
    git(repo, "init", "--quiet", "--initial-branch=main")
    commit_all(repo, message)
    return repo


@pytest.fixture
def target(sshd: SshHost) -> SshTarget:
    return SshTarget(
        host=sshd.host,
        port=sshd.port,
        user=sshd.user,
        private_key=sshd.private_key,
        known_hosts=sshd.known_hosts,
    )


@pytest.fixture
def runner(tmp_path: Path) -> AnsibleRunner:
    return AnsibleRunner(work_root=tmp_path / "ansible")


@pytest.fixture
def apps_root() -> Iterator[Path]:
    """The target's apps root (the target is this machine); every app started there is stopped."""
    root = Path(tempfile.mkdtemp(prefix="o-apps-"))
    try:
        yield root
    finally:
        end_apps(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def app_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service template rendered and committed on `main`, plus branches: `broken` (fails its
    health check), `v2` (serves, and says so on `/`, so a test sees which version serves), `deps`
    (needs six from PyPI, listed in its requirements.txt, to answer), `bad-deps` (lists a
    package PyPI does not have) and `locked` (`deps` with six in a uv lockfile instead)."""
    repo = tmp_path_factory.mktemp("app") / "repo"
    data = {"project_name": "hello", "description": "A deploy test.", "modules": ["backend"]}
    copier.run_copy(str(TEMPLATES_DIR / "service"), str(repo), data=data, defaults=True, quiet=True)
    new_repository(repo, "Scaffold")
    git(repo, "checkout", "-q", "-b", "broken")
    (repo / "app" / "__main__.py").write_text(BROKEN_MAIN)
    git(repo, *COMMIT, "Break the start", "--all")
    git(repo, "checkout", "-q", "-b", "v2", "main")
    server = repo / "app" / "server.py"
    hello = '"message": "hello"'
    assert hello in server.read_text()
    server.write_text(server.read_text().replace(hello, '"message": "hello from v2"'))
    git(repo, *COMMIT, "Say which version serves", "--all")
    git(repo, "checkout", "-q", "-b", "deps", "main")
    (repo / "requirements.txt").write_text(f"{DEPENDENCY}\n")
    with_six = '"message": "hello with six " + __import__("six").__version__'
    server.write_text(server.read_text().replace(hello, with_six))
    git(repo, "add", "--all")
    git(repo, *COMMIT, "Say hello with a dependency")
    git(repo, "checkout", "-q", "-b", "bad-deps", "deps")
    (repo / "requirements.txt").write_text(f"{MISSING_DEPENDENCY}\n")
    git(repo, *COMMIT, "Ask for a package that does not exist", "--all")
    git(repo, "checkout", "-q", "-b", "locked", "deps")
    git(repo, "rm", "-q", "requirements.txt")
    write_locked_project(repo)
    git(repo, "add", "--all")
    git(repo, *COMMIT, "Lock the dependency with uv instead")
    git(repo, "checkout", "-q", "main")
    return repo


@pytest.fixture(scope="session")
def notes_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The database app (notes in PostgreSQL) committed on `main`."""
    repo = tmp_path_factory.mktemp("notes") / "repo"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "__init__.py").write_text("")
    (repo / "app" / "__main__.py").write_text(NOTES_MAIN)
    (repo / "app" / "migrate.py").write_text(NOTES_MIGRATE)
    (repo / "requirements.txt").write_text(f"{DATABASE_DEPENDENCY}\n")
    return new_repository(repo, "Notes")
